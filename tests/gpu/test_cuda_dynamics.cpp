// The CUDA INL dynamics ops against the CPU reference, on values that hit
// every clamp: |u| past a small velocity_max, softplus(b) past beta_max (and
// past softplus' linear threshold), mu below mu_min, above mu_max and on both
// bounds. H = 20 and 300 (two column tiles) element by element, H = 40 and
// 2112 (two column tiles) in 16-byte chunks; N = 37 (a partial row chunk).
// There the forward takes ctrl through a controller that passes it through
// (weight I, bias 0: a GEMM, then the update). A real controller's ctrl is
// made in the update's tiles (C 16 to 64, H a multiple of 64): checked
// against the CPU, and against dynamics_control's ctrl, which the backward
// takes, bit for bit.
#include <cmath>
#include <stdexcept>
#include <vector>

#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

// dmu sums N = 37 terms g_u * beta (|g_u| < ~4, beta <= 2) computed in fp32,
// each a chain of ~10 roundings (5e-7 relative), against the CPU's double:
// at most 37 * 8 * 5e-7 = 1.5e-4 apart, far below the O(1) values.
constexpr double kDmuRtol = 1e-5, kDmuAtol = 2e-4;

struct Problem {
    int64_t N, H;
    DynamicsParams p;
    std::vector<float> h, v, ctrl, mu;

    Problem(int64_t N_, int64_t H_, Rng& rng)
        : N(N_), H(H_), h(bf16_normals(N * H, rng, 2.0)), v(bf16_normals(N * H, rng)),
          ctrl(bf16_normals(N * 3 * H, rng, 2.5)), mu(bf16_normals(H, rng, 1.5)) {
        p.velocity_max = 0.5;
        for (float& m : mu) m = round_bf16(m + 1.0f);  // around (mu_min + mu_max) / 2, often outside
        mu[0] = float(p.mu_min);
        mu[1] = float(p.mu_max);
        mu[2] = -0.5f;
        mu[3] = 3.0f;
        ctrl[H + 5] = 25.0f;  // b past softplus' threshold of 20
    }
    Tensor cpu(std::vector<float>& t, int64_t cols) { return host_tensor(t, {N, cols}); }
};

// A controller's last layer that passes ctrl through: weight I [3H,3H], bias 0.
struct Passthrough {
    std::vector<float> weight, bias;
    explicit Passthrough(int64_t H) : weight(size_t(9 * H * H), 0.0f), bias(size_t(3 * H), 0.0f) {
        for (int64_t j = 0; j < 3 * H; ++j) weight[size_t(j * 3 * H + j)] = 1.0f;
    }
    Tensor cpu_weight(int64_t H) { return host_tensor(weight, {3 * H, 3 * H}); }
    Tensor cpu_bias(int64_t H) { return host_tensor(bias, {3 * H}); }
    Tensor gpu_weight(Backends& b, int64_t H) { return b.upload(weight, DType::BF16, {3 * H, 3 * H}); }
    Tensor gpu_bias(Backends& b, int64_t H) { return b.upload(bias, DType::BF16, {3 * H}); }
};

// Every clamp clips somewhere and passes somewhere.
void require_every_clamp(const Problem& q, const std::vector<float>& v_out) {
    int v_clipped = 0, beta_clipped = 0, mu_clipped = 0;
    for (float x : v_out) v_clipped += std::fabs(x) == float(q.p.velocity_max);
    for (int64_t n = 0; n < q.N; ++n)
        for (int64_t c = 0; c < q.H; ++c) {
            const double b = q.ctrl[n * 3 * q.H + q.H + c];
            beta_clipped += (b > 20 ? b : std::log1p(std::exp(b))) > q.p.beta_max;
        }
    for (float m : q.mu) mu_clipped += m < q.p.mu_min || m > q.p.mu_max;
    const int all = int(q.N * q.H);
    REQUIRE(v_clipped > 0);
    REQUIRE(v_clipped < all);
    REQUIRE(beta_clipped > 0);
    REQUIRE(beta_clipped < all);
    REQUIRE(mu_clipped > 0);
    REQUIRE(mu_clipped < q.H);
}

void check_dynamics(Backends& b, int64_t N, int64_t H, Write write) {
    INFO("N " << N << ", H " << H << (write == Write::add ? ", adding" : ", overwriting"));
    Rng rng(uint64_t(H), "cuda dynamics");
    Problem q(N, H, rng);
    Tensor h = b.upload(q.h, DType::BF16, {N, H}), v = b.upload(q.v, DType::BF16, {N, H});
    Tensor ctrl = b.upload(q.ctrl, DType::BF16, {N, 3 * H}), mu = b.upload(q.mu, DType::BF16, {H});

    std::vector<float> h_out(size_t(N * H)), v_out(size_t(N * H));
    Passthrough pass(H);
    b.cpu.dynamics_forward(q.cpu(h_out, H), q.cpu(v_out, H), q.cpu(q.h, H), q.cpu(q.v, H), q.cpu(q.ctrl, 3 * H),
                           pass.cpu_weight(H), pass.cpu_bias(H), host_tensor(q.mu, {H}), q.p);
    require_every_clamp(q, v_out);
    Tensor gpu_h_out = b.zeros(DType::BF16, {N, H}), gpu_v_out = b.zeros(DType::BF16, {N, H});
    const Tensor pass_weight = pass.gpu_weight(b, H), pass_bias = pass.gpu_bias(b, H);
    b.gpu.dynamics_forward(gpu_h_out, gpu_v_out, h, v, ctrl, pass_weight, pass_bias, mu, q.p);
    require_near("h_out", b.download(gpu_h_out), h_out, kBf16Rtol, kBf16Atol);
    require_near("v_out", b.download(gpu_v_out), v_out, kBf16Rtol, kBf16Atol);

    // Nonzero starting gradients: the op must add to them, or write over them
    // (dmu as well).
    std::vector<float> dh_out = bf16_normals(N * H, rng), dv_out = bf16_normals(N * H, rng);
    const std::vector<float> dh0 = bf16_normals(N * H, rng), dv0 = bf16_normals(N * H, rng);
    const std::vector<float> dctrl0 = bf16_normals(N * 3 * H, rng), dmu0 = bf16_normals(H, rng);
    const std::vector<float> dbias0 = bf16_normals(3 * H, rng);
    std::vector<float> dh = dh0, dv = dv0, dctrl = dctrl0, dmu = dmu0, dbias = dbias0;
    b.cpu.dynamics_backward(q.cpu(dh, H), q.cpu(dv, H), q.cpu(dctrl, 3 * H), host_tensor(dmu, {H}),
                            host_tensor(dbias, {3 * H}), q.cpu(dh_out, H), q.cpu(dv_out, H), q.cpu(q.h, H),
                            q.cpu(q.v, H), q.cpu(q.ctrl, 3 * H), pass.cpu_weight(H), pass.cpu_bias(H),
                            host_tensor(q.mu, {H}), q.p, write, write);
    Tensor gpu_dh_out = b.upload(dh_out, DType::BF16, {N, H}), gpu_dv_out = b.upload(dv_out, DType::BF16, {N, H});
    Tensor gpu_dh = b.upload(dh0, DType::BF16, {N, H}), gpu_dv = b.upload(dv0, DType::BF16, {N, H});
    Tensor gpu_dctrl = b.upload(dctrl0, DType::BF16, {N, 3 * H}), gpu_dmu = b.upload(dmu0, DType::F32, {H});
    Tensor gpu_dbias = b.upload(dbias0, DType::F32, {3 * H});
    b.gpu.dynamics_backward(gpu_dh, gpu_dv, gpu_dctrl, gpu_dmu, gpu_dbias, gpu_dh_out, gpu_dv_out, h, v, ctrl,
                            pass_weight, pass_bias, mu, q.p, write, write);
    require_near("dh", b.download(gpu_dh), dh, kBf16Rtol, kBf16Atol);
    require_near("dv", b.download(gpu_dv), dv, kBf16Rtol, kBf16Atol);
    require_near("dctrl", b.download(gpu_dctrl), dctrl, kBf16Rtol, kBf16Atol);
    require_near("dmu", b.download(gpu_dmu), dmu, kDmuRtol, kDmuAtol);
    // dbias sums the dctrl terms: the CPU's in fp32, the GPU's rounded to
    // bf16 as dctrl holds them (each off by up to 2^-9 of itself).
    const std::vector<float> got_dbias = b.download(gpu_dbias), got_dctrl = b.download(gpu_dctrl);
    for (int64_t c = 0; c < 3 * H; ++c) {
        double cpu_terms = 0, gpu_sum = write == Write::add ? dbias0[c] : 0;
        for (int64_t n = 0; n < N; ++n) {
            const size_t i = size_t(n * 3 * H + c);
            cpu_terms += std::fabs(dctrl[i] - (write == Write::add ? dctrl0[i] : 0.f));
            gpu_sum += got_dctrl[i];
        }
        INFO("dbias column " << c);
        REQUIRE(std::fabs(got_dbias[c] - dbias[c]) <= std::ldexp(cpu_terms, -8) + 1e-5);
        // Written over, dctrl holds exactly the terms the GPU summed.
        if (write == Write::overwrite) REQUIRE(std::fabs(got_dbias[c] - gpu_sum) <= 1e-5 * (cpu_terms + 1));
    }

    // Empty gradients are not wanted: dmu alone, dctrl alone, dbias alone.
    Tensor dmu_only = b.upload(dmu0, DType::F32, {H}), dctrl_only = b.upload(dctrl0, DType::BF16, {N, 3 * H});
    Tensor dbias_only = b.upload(dbias0, DType::F32, {3 * H});
    b.gpu.dynamics_backward(Tensor{}, Tensor{}, Tensor{}, dmu_only, Tensor{}, gpu_dh_out, gpu_dv_out, h, v, ctrl,
                            pass_weight, pass_bias, mu, q.p, write, write);
    b.gpu.dynamics_backward(Tensor{}, Tensor{}, dctrl_only, Tensor{}, Tensor{}, gpu_dh_out, gpu_dv_out, h, v, ctrl,
                            pass_weight, pass_bias, mu, q.p, write, write);
    b.gpu.dynamics_backward(Tensor{}, Tensor{}, Tensor{}, Tensor{}, dbias_only, gpu_dh_out, gpu_dv_out, h, v, ctrl,
                            pass_weight, pass_bias, mu, q.p, write, write);
    REQUIRE(b.download(dmu_only) == b.download(gpu_dmu));
    REQUIRE(b.download(dctrl_only) == b.download(gpu_dctrl));
    REQUIRE(b.download(dbias_only) == b.download(gpu_dbias));
}

// The forward with a controller of size C over N rows of H: its ctrl made in
// the update's tiles against the CPU's, and against dynamics_control's (the
// backward's) bit for bit, through the passthrough path.
void check_control(Backends& b, int64_t N, int64_t H, int64_t C) {
    INFO("N " << N << ", H " << H << ", C " << C);
    Rng rng(uint64_t(H + C), "cuda dynamics control");
    Problem q(N, H, rng);
    std::vector<float> act = bf16_normals(N * C, rng), weight = bf16_normals(3 * H * C, rng, 2.5 / std::sqrt(C));
    std::vector<float> bias = bf16_normals(3 * H, rng);
    Tensor gpu_act = b.upload(act, DType::BF16, {N, C}), gpu_weight = b.upload(weight, DType::BF16, {3 * H, C});
    Tensor gpu_bias = b.upload(bias, DType::BF16, {3 * H});
    Tensor h = b.upload(q.h, DType::BF16, {N, H}), v = b.upload(q.v, DType::BF16, {N, H});
    Tensor mu = b.upload(q.mu, DType::BF16, {H});

    std::vector<float> ctrl(size_t(N * 3 * H));
    b.cpu.dynamics_control(q.cpu(ctrl, 3 * H), host_tensor(act, {N, C}), host_tensor(weight, {3 * H, C}),
                           host_tensor(bias, {3 * H}));
    Tensor gpu_ctrl = b.zeros(DType::BF16, {N, 3 * H});
    b.gpu.dynamics_control(gpu_ctrl, gpu_act, gpu_weight, gpu_bias);
    require_near("ctrl", b.download(gpu_ctrl), ctrl, kBf16Rtol, kBf16Atol);

    // The update against the CPU's on the GPU's ctrl: a last-bit difference
    // in ctrl moves u = alpha v - beta (h - mu) far more where it cancels.
    std::vector<float> h_out(size_t(N * H)), v_out(size_t(N * H)), made = b.download(gpu_ctrl);
    Passthrough pass(H);
    b.cpu.dynamics_forward(q.cpu(h_out, H), q.cpu(v_out, H), q.cpu(q.h, H), q.cpu(q.v, H), q.cpu(made, 3 * H),
                           pass.cpu_weight(H), pass.cpu_bias(H), host_tensor(q.mu, {H}), q.p);
    Tensor gpu_h_out = b.zeros(DType::BF16, {N, H}), gpu_v_out = b.zeros(DType::BF16, {N, H});
    b.gpu.dynamics_forward(gpu_h_out, gpu_v_out, h, v, gpu_act, gpu_weight, gpu_bias, mu, q.p);
    const std::vector<float> got_h = b.download(gpu_h_out), got_v = b.download(gpu_v_out);
    require_near("h_out", got_h, h_out, kBf16Rtol, kBf16Atol);
    require_near("v_out", got_v, v_out, kBf16Rtol, kBf16Atol);

    const Tensor pass_weight = pass.gpu_weight(b, H), pass_bias = pass.gpu_bias(b, H);
    Tensor pass_h = b.zeros(DType::BF16, {N, H}), pass_v = b.zeros(DType::BF16, {N, H});
    b.gpu.dynamics_forward(pass_h, pass_v, h, v, gpu_ctrl, pass_weight, pass_bias, mu, q.p);
    REQUIRE(b.download(pass_h) == got_h);
    REQUIRE(b.download(pass_v) == got_v);

    // The backward, added to nonzero gradients: its ctrl is the forward's,
    // so it equals the passthrough's on that ctrl (dmu to its summation order).
    const std::vector<float> dh_out = bf16_normals(N * H, rng), dv_out = bf16_normals(N * H, rng);
    const std::vector<float> dh0 = bf16_normals(N * H, rng), dctrl0 = bf16_normals(N * 3 * H, rng);
    const std::vector<float> dmu0 = bf16_normals(H, rng), dbias0 = bf16_normals(3 * H, rng);
    Tensor gpu_dh_out = b.upload(dh_out, DType::BF16, {N, H}), gpu_dv_out = b.upload(dv_out, DType::BF16, {N, H});
    std::vector<std::vector<float>> results;
    for (bool through : {false, true}) {
        Tensor dh = b.upload(dh0, DType::BF16, {N, H}), dv = b.upload(dh0, DType::BF16, {N, H});
        Tensor dctrl = b.upload(dctrl0, DType::BF16, {N, 3 * H}), dmu = b.upload(dmu0, DType::F32, {H});
        Tensor dbias = b.upload(dbias0, DType::F32, {3 * H});
        if (through)
            b.gpu.dynamics_backward(dh, dv, dctrl, dmu, dbias, gpu_dh_out, gpu_dv_out, h, v, gpu_ctrl, pass_weight,
                                    pass_bias, mu, q.p, Write::add, Write::add);
        else
            b.gpu.dynamics_backward(dh, dv, dctrl, dmu, dbias, gpu_dh_out, gpu_dv_out, h, v, gpu_act, gpu_weight,
                                    gpu_bias, mu, q.p, Write::add, Write::add);
        for (Tensor t : {dh, dv, dctrl, dmu, dbias}) results.push_back(b.download(t));
    }
    REQUIRE(results[5] == results[0]);
    REQUIRE(results[6] == results[1]);
    REQUIRE(results[7] == results[2]);
    require_near("dmu", results[3], results[8], kDmuRtol, kDmuAtol);
    require_near("dbias", results[4], results[9], kDmuRtol, kDmuAtol);
    REQUIRE(results[0] != dh0);
}

}  // namespace

TEST_CASE("cuda dynamics make ctrl from the controller as dynamics_control writes it", "[gpu]") {
    Backends b;
    for (int64_t C : {16, 48, 64}) check_control(b, 37, 64, C);
    check_control(b, 130, 128, 64);  // three row tiles, two column tiles
    check_control(b, 37, 96, 64);    // H past whole tiles: the GEMM's ctrl
    check_control(b, 37, 64, 40);    // C the tiles do not take: the GEMM's ctrl
}

TEST_CASE("cuda dynamics forward and backward match the CPU through every clamp", "[gpu]") {
    Backends b;
    for (Write write : {Write::add, Write::overwrite}) {
        for (int64_t H : {20, 300, 40, 2112}) check_dynamics(b, 37, H, write);
    }
}

TEST_CASE("cuda dynamics reject wrong dtypes and shapes", "[gpu]") {
    Backends b;
    const int64_t N = 3, H = 4;
    Tensor h = b.zeros(DType::BF16, {N, H}), mu = b.zeros(DType::BF16, {H});
    const DynamicsParams p;
    Tensor act = b.zeros(DType::BF16, {N, 16}), weight = b.zeros(DType::BF16, {3 * H, 16});
    Tensor bias = b.zeros(DType::BF16, {3 * H});
    REQUIRE_THROWS_AS(b.gpu.dynamics_forward(h, h, h, h, act, b.zeros(DType::BF16, {2 * H, 16}), bias, mu, p),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.dynamics_forward(h, h, h, h, act, weight, bias, b.zeros(DType::BF16, {H + 1}), p),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.dynamics_control(b.zeros(DType::F32, {N, 3 * H}), act, weight, bias),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.dynamics_backward(Tensor{}, Tensor{}, Tensor{}, b.zeros(DType::BF16, {H}), Tensor{}, h,
                                              h, h, h, act, weight, bias, mu, p, Write::add, Write::add),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.dynamics_backward(Tensor{}, Tensor{}, Tensor{}, Tensor{}, b.zeros(DType::F32, {3 * H + 1}),
                                              h, h, h, h, act, weight, bias, mu, p, Write::add, Write::add),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.dynamics_backward(Tensor{}, Tensor{}, Tensor{}, Tensor{}, Tensor{}, Tensor{}, h, h, h, act,
                                              weight, bias, mu, p, Write::add, Write::add),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.dynamics_backward(Tensor{}, Tensor{}, Tensor{}, Tensor{}, Tensor{}, h, h, h, h, act,
                                              weight, b.zeros(DType::BF16, {3 * H + 1}), mu, p, Write::add, Write::add),
                      std::invalid_argument);
}
