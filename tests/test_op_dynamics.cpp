// The INL dynamics update on the CPU: forward against a naive loop, backward
// against central finite differences in double away from the clamps' kinks,
// zero gradient where a clamp clips, torch's inclusive bounds, and a dmu that
// does not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"

using namespace moe;

namespace {

template <class T> Tensor tensor(std::vector<T>& v, std::initializer_list<int64_t> dims) {
    return Tensor(v.data(), dtype_of<T>(), dims);
}

// A controller whose last layer passes its input through (weight I [3H,3H],
// bias 0): dynamics_forward on act = ctrl sees ctrl exactly.
template <class T> struct Passthrough {
    std::vector<T> weight, bias;
    explicit Passthrough(int64_t H) : weight(size_t(9 * H * H), T(0)), bias(size_t(3 * H), T(0)) {
        for (int64_t j = 0; j < 3 * H; ++j) weight[size_t(j * 3 * H + j)] = T(1);
    }
    void forward(CpuOps& ops, Tensor h_out, Tensor v_out, Tensor h, Tensor v, Tensor ctrl, Tensor mu,
                 const DynamicsParams& p) {
        const int64_t H = h.dim(1);
        ops.dynamics_forward(h_out, v_out, h, v, ctrl, tensor(weight, {3 * H, 3 * H}), tensor(bias, {3 * H}), mu, p);
    }
    void backward(CpuOps& ops, Tensor dh, Tensor dv, Tensor dctrl, Tensor dmu, Tensor dh_out, Tensor dv_out, Tensor h,
                  Tensor v, Tensor ctrl, Tensor mu, const DynamicsParams& p, Write write, Write dw_write) {
        const int64_t H = h.dim(1);
        ops.dynamics_backward(dh, dv, dctrl, dmu, {}, dh_out, dv_out, h, v, ctrl, tensor(weight, {3 * H, 3 * H}),
                              tensor(bias, {3 * H}), mu, p, write, dw_write);
    }
};

// n normal draws times scale, as floats.
std::vector<float> scaled_normals(Rng& rng, int64_t n, double scale) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& e : x) e = float(scale * rng.normal());
    return x;
}

// The update of one element written out in long double, with the value the
// velocity clamp and the beta min see.
struct Naive {
    long double alpha, softplus_b, beta, gate, mu_c, u, v_new, h_new;
};

Naive naive(double h, double v, double a, double b, double g, double mu, const DynamicsParams& p) {
    Naive s;
    s.alpha = 1 / (1 + std::exp(-(long double)a));
    s.softplus_b = b > 20 ? (long double)b : std::log1p(std::exp((long double)b));
    s.beta = std::min<long double>(s.softplus_b, p.beta_max);
    s.gate = 1 / (1 + std::exp(-(long double)g));
    s.mu_c = std::min<long double>(std::max<long double>(mu, p.mu_min), p.mu_max);
    s.u = s.alpha * v - s.beta * (h - s.mu_c);
    s.v_new = std::min<long double>(std::max<long double>(s.u, -p.velocity_max), p.velocity_max);
    s.h_new = h + p.dt * s.gate * s.v_new;
    return s;
}

// h, v [N,H], ctrl [N,3H], mu [H], their gradients, and an upstream gradient
// (dh_out, dv_out): the loss is sum dh_out * h' + dv_out * v'.
struct Problem {
    int64_t N, H;
    DynamicsParams p;
    std::vector<double> h, v, ctrl, mu, h_out, v_out, dh_out, dv_out;
    std::vector<double> dh, dv, dctrl, dmu;

    Problem(int64_t N_, int64_t H_, const DynamicsParams& p_)
        : N(N_), H(H_), p(p_), h(N * H), v(N * H), ctrl(N * 3 * H), mu(H), h_out(N * H), v_out(N * H),
          dh_out(N * H), dv_out(N * H), dh(N * H), dv(N * H), dctrl(N * 3 * H), dmu(H) {}

    Naive at(int64_t n, int64_t c) const {
        const int64_t i = n * H + c;
        const double* cn = &ctrl[n * 3 * H];
        return naive(h[i], v[i], cn[c], cn[H + c], cn[2 * H + c], mu[c], p);
    }
    void forward(CpuOps& ops) {
        Passthrough<double>(H).forward(ops, tensor(h_out, {N, H}), tensor(v_out, {N, H}), tensor(h, {N, H}),
                                       tensor(v, {N, H}), tensor(ctrl, {N, 3 * H}), tensor(mu, {H}), p);
    }
    double loss(CpuOps& ops) {
        forward(ops);
        double f = 0;
        for (int64_t i = 0; i < N * H; ++i) f += dh_out[i] * h_out[i] + dv_out[i] * v_out[i];
        return f;
    }
    // Runs the backward into gradients that start nonzero and keeps what it
    // added (all four written as write says), so the op is checked to add or
    // to overwrite.
    void backward(CpuOps& ops, Rng& rng, Write write) {
        std::vector<double>* grads[] = {&dh, &dv, &dctrl, &dmu};
        std::vector<std::vector<double>> before;
        for (auto* g : grads) {
            for (double& x : *g) x = rng.normal();
            before.push_back(*g);
        }
        Passthrough<double>(H).backward(ops, tensor(dh, {N, H}), tensor(dv, {N, H}), tensor(dctrl, {N, 3 * H}),
                                        tensor(dmu, {H}), tensor(dh_out, {N, H}), tensor(dv_out, {N, H}),
                                        tensor(h, {N, H}), tensor(v, {N, H}), tensor(ctrl, {N, 3 * H}),
                                        tensor(mu, {H}), p, write, write);
        if (write == Write::add)
            for (size_t k = 0; k < before.size(); ++k)
                for (size_t i = 0; i < before[k].size(); ++i) (*grads[k])[i] -= before[k][i];
    }
};

DynamicsParams clipping_params() {
    DynamicsParams p;
    p.dt = 0.3;
    p.beta_max = 2.0;
    p.velocity_max = 1.0;  // small, so many velocities clip
    p.mu_min = 0.0;
    p.mu_max = 2.0;
    return p;
}

// Random inputs where some velocities clip, some betas exceed beta_max and mu
// lies below mu_min in column 0 and above mu_max in column 3. Every element
// stays at least 1e-3 from a kink, so finite differences see smooth functions.
Problem clipping_problem() {
    Problem pr(5, 6, clipping_params());
    Rng rng(9, "dynamics inputs");
    pr.mu = {-0.5, 0.3, 1.0, 2.5, 1.7, 0.8};
    for (double& x : pr.h) x = rng.uniform(-2, 3);
    for (double& x : pr.v) x = rng.uniform(-2.5, 2.5);
    for (int64_t n = 0; n < pr.N; ++n)
        for (int64_t c = 0; c < pr.H; ++c) {
            double* cn = &pr.ctrl[n * 3 * pr.H];
            cn[c] = 1.5 * rng.normal();
            cn[pr.H + c] = rng.uniform(-3, 3.5);
            cn[2 * pr.H + c] = rng.normal();
        }
    // softplus far into its linear branch and far into its flat tail.
    pr.ctrl[pr.H + 1] = 60;
    pr.ctrl[3 * pr.H + pr.H + 2] = -60;
    for (double& x : pr.dh_out) x = rng.normal();
    for (double& x : pr.dv_out) x = rng.normal();
    for (int64_t n = 0; n < pr.N; ++n)
        for (int64_t c = 0; c < pr.H; ++c) {
            const Naive s = pr.at(n, c);
            REQUIRE(std::fabs(std::fabs(double(s.u)) - pr.p.velocity_max) > 1e-3);
            REQUIRE(std::fabs(double(s.softplus_b) - pr.p.beta_max) > 1e-3);
        }
    return pr;
}

template <class T> void check_forward_against_naive() {
    Problem pr = clipping_problem();
    auto cast = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
    std::vector<T> h = cast(pr.h), v = cast(pr.v), ctrl = cast(pr.ctrl), mu = cast(pr.mu);
    std::vector<T> h_out(h.size()), v_out(v.size());
    const int64_t N = pr.N, H = pr.H;
    CpuOps ops;
    Passthrough<T>(H).forward(ops, tensor(h_out, {N, H}), tensor(v_out, {N, H}), tensor(h, {N, H}),
                              tensor(v, {N, H}), tensor(ctrl, {N, 3 * H}), tensor(mu, {H}), pr.p);
    // Inputs rounded to T are the naive loop's inputs; tolerance a few ulp of T.
    const double tol = std::is_same<T, float>::value ? 1e-6 : 1e-14;
    int clipped = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < H; ++c) {
            const int64_t i = n * H + c;
            const T* cn = &ctrl[n * 3 * H];
            const Naive s = naive(h[i], v[i], cn[c], cn[H + c], cn[2 * H + c], mu[c], pr.p);
            INFO("element " << n << ", " << c);
            REQUIRE(std::fabs(double(h_out[i] - s.h_new)) <= tol * std::max(1.0L, std::fabs(s.h_new)));
            REQUIRE(std::fabs(double(v_out[i] - s.v_new)) <= tol);
            clipped += std::fabs(double(s.u)) > pr.p.velocity_max;
        }
    REQUIRE(clipped > 0);
    REQUIRE(clipped < N * H);
}

}  // namespace

TEST_CASE("dynamics_forward matches a naive loop, with clipping", "[unit]") {
    check_forward_against_naive<float>();
    check_forward_against_naive<double>();
}

TEST_CASE("dynamics_backward matches finite differences away from the kinks", "[unit]") {
    Problem pr = clipping_problem();
    CpuOps ops;
    Rng rng(10, "dynamics grads");
    pr.backward(ops, rng, Write::add);
    auto loss = [&] { return pr.loss(ops); };
    // atol: the loss is O(10), so rounding in a central difference with eps
    // 1e-6 is up to ~1e-15 * 10 / 2e-6 = 5e-9.
    test::check_gradient("dh", loss, pr.h.data(), pr.dh.data(), pr.N * pr.H, 1e-6, 1e-8);
    test::check_gradient("dv", loss, pr.v.data(), pr.dv.data(), pr.N * pr.H, 1e-6, 1e-8);
    test::check_gradient("dctrl", loss, pr.ctrl.data(), pr.dctrl.data(), pr.N * 3 * pr.H, 1e-6, 1e-8, 90);
    test::check_gradient("dmu", loss, pr.mu.data(), pr.dmu.data(), pr.H, 1e-6, 1e-8);
}

TEST_CASE("dynamics_backward passes no gradient where a clamp clips", "[unit]") {
    for (const Write write : {Write::add, Write::overwrite}) {  // overwritten: zeros where clipped
        INFO((write == Write::add ? "adding" : "overwriting"));
        Problem pr = clipping_problem();
        CpuOps ops;
        Rng rng(11, "dynamics clipped");
        pr.backward(ops, rng, write);
        const int64_t H = pr.H;
        int v_clipped = 0, beta_clipped = 0;
        for (int64_t n = 0; n < pr.N; ++n)
            for (int64_t c = 0; c < H; ++c) {
                const int64_t i = n * H + c;
                const Naive s = pr.at(n, c);
                const double* gc = &pr.dctrl[n * 3 * H];
                INFO("element " << n << ", " << c);
                if (std::fabs(double(s.u)) > pr.p.velocity_max) {
                    ++v_clipped;
                    // Only h' = h + dt gate v' remains, with v' a constant.
                    REQUIRE(pr.dv[i] == 0);
                    REQUIRE(gc[c] == 0);
                    REQUIRE(gc[H + c] == 0);
                    REQUIRE(pr.dh[i] == Approx(pr.dh_out[i]).margin(1e-15));
                    REQUIRE(gc[2 * H + c] != 0);
                } else {
                    REQUIRE(pr.dv[i] != 0);
                }
                if (s.softplus_b > pr.p.beta_max) {
                    ++beta_clipped;
                    REQUIRE(gc[H + c] == 0);
                }
            }
        REQUIRE(v_clipped > 0);
        REQUIRE(beta_clipped > 0);
        REQUIRE(pr.dmu[0] == 0);  // mu below mu_min
        REQUIRE(pr.dmu[3] == 0);  // mu above mu_max
        REQUIRE(pr.dmu[1] != 0);
    }
}

TEST_CASE("dynamics_backward passes gradient at the bounds themselves, as torch.clamp", "[unit]") {
    DynamicsParams p = clipping_params();
    p.beta_max = 25;
    Problem pr(1, 3, p);
    // Column 0: alpha = sigmoid(0) = 0.5 and h = mu, so u = 0.5 * 2 = velocity_max
    //           exactly.
    // Column 1: mu = mu_max exactly.
    // Column 2: softplus(25) = 25 = beta_max exactly (softplus's linear branch).
    pr.h = {1.0, 1.5, 1.01};
    pr.v = {2.0, 0.3, 0.4};
    pr.mu = {1.0, 2.0, 1.0};
    pr.ctrl = {0.0, 0.2, -0.3, /* b */ 0.3, 0.1, 25, /* g */ 0.3, -0.4, 0.5};
    pr.dh_out = {0.8, -1.1, 0.6};
    pr.dv_out = {0.5, 0.9, -0.7};
    REQUIRE(pr.at(0, 0).u == p.velocity_max);
    REQUIRE(pr.at(0, 2).softplus_b == p.beta_max);
    CpuOps ops;
    Rng rng(12, "dynamics bounds");
    pr.backward(ops, rng, Write::add);
    auto g_u = [&](int c) {  // dL/du where the velocity clamp passes
        return double(pr.dv_out[c] + pr.dh_out[c] * p.dt * pr.at(0, c).gate);
    };
    REQUIRE(pr.dv[0] == Approx(0.5 * g_u(0)));
    REQUIRE(pr.dmu[1] == Approx(g_u(1) * double(pr.at(0, 1).beta)));
    // d beta / d b = 1 on softplus's linear branch.
    REQUIRE(pr.dctrl[3 + 2] == Approx(-g_u(2) * (pr.h[2] - pr.mu[2])));
    REQUIRE(pr.dv[0] != 0);
    REQUIRE(pr.dmu[1] != 0);
    REQUIRE(pr.dctrl[3 + 2] != 0);
}

TEST_CASE("dynamics_backward's dmu does not depend on the thread count", "[unit]") {
    // Enough rows for several of the backward's row chunks, in F32 where the
    // order of a sum shows.
    const int64_t N = 300, H = 4;
    Rng rng(13, "dynamics threads");
    auto random = [&](int64_t n) {
        std::vector<float> x(n);
        for (float& e : x) e = float(rng.normal());
        return x;
    };
    std::vector<float> h = random(N * H), v = random(N * H), ctrl = random(N * 3 * H), dh_out = random(N * H),
                       dv_out = random(N * H), mu{0.5f, 1.0f, 1.5f, 1.2f};
    CpuOps ops;
    const int saved = omp_get_max_threads();
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        std::vector<float> dmu(H, 0.0f);
        Passthrough<float>(H).backward(ops, {}, {}, {}, tensor(dmu, {H}), tensor(dh_out, {N, H}),
                                       tensor(dv_out, {N, H}), tensor(h, {N, H}), tensor(v, {N, H}),
                                       tensor(ctrl, {N, 3 * H}), tensor(mu, {H}), DynamicsParams{}, Write::add,
                                       Write::add);
        results.push_back(dmu);
    }
    omp_set_num_threads(saved);
    REQUIRE(results[0] != std::vector<float>(H, 0.0f));
    REQUIRE(results[1] == results[0]);
    REQUIRE(results[2] == results[0]);
}

TEST_CASE("dynamics_forward makes ctrl from the controller's last layer as dynamics_control writes it", "[unit]") {
    const int64_t N = 7, H = 5, C = 6;
    Rng rng(11, "dynamics control");
    auto random = [&](int64_t n, double scale) { return scaled_normals(rng, n, scale); };
    std::vector<float> h = random(N * H, 2), v = random(N * H, 1), act = random(N * C, 1), weight = random(3 * H * C, 1),
                       bias = random(3 * H, 1), mu = random(H, 1);
    CpuOps ops;
    std::vector<float> ctrl(static_cast<size_t>(N * 3 * H)), linear(ctrl.size());
    ops.dynamics_control(tensor(ctrl, {N, 3 * H}), tensor(act, {N, C}), tensor(weight, {3 * H, C}),
                         tensor(bias, {3 * H}));
    ops.matmul_forward(tensor(linear, {N, 3 * H}), tensor(act, {N, C}), tensor(weight, {3 * H, C}),
                       tensor(bias, {3 * H}));
    REQUIRE(ctrl == linear);
    const DynamicsParams p;
    std::vector<float> h_out(h.size()), v_out(v.size()), h_want(h.size()), v_want(v.size());
    ops.dynamics_forward(tensor(h_out, {N, H}), tensor(v_out, {N, H}), tensor(h, {N, H}), tensor(v, {N, H}),
                         tensor(act, {N, C}), tensor(weight, {3 * H, C}), tensor(bias, {3 * H}), tensor(mu, {H}), p);
    Passthrough<float>(H).forward(ops, tensor(h_want, {N, H}), tensor(v_want, {N, H}), tensor(h, {N, H}),
                                  tensor(v, {N, H}), tensor(ctrl, {N, 3 * H}), tensor(mu, {H}), p);
    REQUIRE(h_out == h_want);
    REQUIRE(v_out == v_want);
    REQUIRE_THROWS_AS(ops.dynamics_forward(tensor(h_out, {N, H}), tensor(v_out, {N, H}), tensor(h, {N, H}),
                                           tensor(v, {N, H}), tensor(act, {N, C}), tensor(weight, {3 * H - 1, C}),
                                           tensor(bias, {3 * H}), tensor(mu, {H}), p),
                      std::invalid_argument);
}

TEST_CASE("dynamics_backward's dbias is matmul_backward's bias gradient of the dctrl it makes", "[unit]") {
    const int64_t N = 9, H = 4, C = 6;
    Rng rng(12, "dynamics dbias");
    auto random = [&](int64_t n, double scale) { return scaled_normals(rng, n, scale); };
    const std::vector<float> h = random(N * H, 2), v = random(N * H, 1), act = random(N * C, 1),
                             weight = random(3 * H * C, 1), bias = random(3 * H, 1), mu = random(H, 1),
                             dh_out = random(N * H, 1), dv_out = random(N * H, 1), start = random(N * 3 * H, 1),
                             dbias_start = random(3 * H, 1), dh_start = random(N * H, 1);
    CpuOps ops;
    const DynamicsParams p;
    // The op on copies of the inputs: dh, dctrl and dbias as asked (dctrl may be left out).
    auto run = [&](bool with_dctrl, bool with_dbias, Write write, Write dw_write) {
        std::vector<float> dh = dh_start, dctrl = start, dbias = dbias_start, in_h = h, in_v = v, in_act = act,
                           in_w = weight, in_b = bias, in_mu = mu, g_h = dh_out, g_v = dv_out;
        ops.dynamics_backward(tensor(dh, {N, H}), {}, with_dctrl ? tensor(dctrl, {N, 3 * H}) : Tensor{}, {},
                              with_dbias ? tensor(dbias, {3 * H}) : Tensor{}, tensor(g_h, {N, H}), tensor(g_v, {N, H}),
                              tensor(in_h, {N, H}), tensor(in_v, {N, H}), tensor(in_act, {N, C}),
                              tensor(in_w, {3 * H, C}), tensor(in_b, {3 * H}), tensor(in_mu, {H}), p, write, dw_write);
        return std::vector<std::vector<float>>{dh, dctrl, dbias};
    };
    for (Write write : {Write::overwrite, Write::add})
        for (Write dw_write : {Write::overwrite, Write::add}) {
            INFO((write == Write::add ? "adding" : "overwriting") << (dw_write == Write::add ? ", dbias added to" : ""));
            const auto plain = run(true, false, write, dw_write), with_dbias = run(true, true, write, dw_write),
                       alone = run(false, true, write, dw_write), terms = run(true, false, Write::overwrite, dw_write);
            REQUIRE(with_dbias[0] == plain[0]);  // dh
            REQUIRE(with_dbias[1] == plain[1]);  // dctrl
            std::vector<float> db = dbias_start, dctrl_terms = terms[1], x(size_t(N), 0.0f), w(size_t(3 * H), 0.0f);
            ops.matmul_backward({}, {}, tensor(db, {3 * H}), tensor(dctrl_terms, {N, 3 * H}), tensor(x, {N, 1}),
                                tensor(w, {3 * H, 1}), Write::add, dw_write);
            REQUIRE(with_dbias[2] == db);
            REQUIRE(alone[2] == db);
            REQUIRE(alone[0] == plain[0]);
        }
}
