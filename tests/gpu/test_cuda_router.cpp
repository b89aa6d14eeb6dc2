// The CUDA router ops against the CPU reference on the same fp32 values: the
// softmax and top-k (ties to the lower expert, E not a power of two, E above
// a warp), the backward with and without the top-k term, and router_stats,
// which must also give the same bits on every call.
#include <cmath>
#include <stdexcept>
#include <vector>

#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

// Both backends compute in fp32 from the same inputs (the CPU in double,
// rounded): a few ulp of values of order 1, and exp's argument x - lse
// (|x - lse| < 30) rounded to 2e-6 absolute, so 2e-6 relative in a prob.
constexpr double kRtol = 1e-5, kAtol = 1e-6;
// The backward's terms reach ~10 (a top-k gradient over a small chosen
// mass S): a few fp32 roundings of those, far below the O(1) values.
constexpr double kBackwardAtol = 1e-5;

// Logits [N,E] rounded to bf16, so distinct logits differ by at least 2^-8
// relative (no near-ties that fp32 and double could order differently) and
// equal ones are common. Row 0 is all equal; row 1 has a three-way tie for
// the top at experts 1, 3 and E-1.
std::vector<float> router_logits(int64_t N, int64_t E, Rng& rng) {
    std::vector<float> l = bf16_normals(N * E, rng, 2.0);
    for (int64_t e = 0; e < E; ++e) l[e] = 0.5f, l[E + e] = -1.0f;
    l[E + 1] = l[E + 3] = l[E + E - 1] = 3.0f;
    return l;
}

// The router's host tensors for the CPU op, and their device copies.
struct Router {
    int64_t N, E, k;
    std::vector<float> logits, probs, lse, w;
    std::vector<int32_t> idx;

    Router(int64_t N_, int64_t E_, int64_t k_, Rng& rng)
        : N(N_), E(E_), k(k_), logits(router_logits(N, E, rng)), probs(N * E), lse(N), w(N * k), idx(N * k) {}

    void cpu_forward(CpuOps& cpu, bool normalize) {
        cpu.router_forward(host_tensor(probs, {N, E}), host_tensor(lse, {N}), host_ids(idx, {N, k}),
                           host_tensor(w, {N, k}), host_tensor(logits, {N, E}), normalize);
    }
};

void check_forward(Backends& b, int64_t N, int64_t E, int64_t k, bool normalize) {
    INFO("N " << N << ", E " << E << ", k " << k << ", normalize " << normalize);
    Rng rng(uint64_t(E * 10 + k), "router forward");
    Router r(N, E, k, rng);
    r.cpu_forward(b.cpu, normalize);

    Tensor probs = b.zeros(DType::F32, {N, E}), lse = b.zeros(DType::F32, {N});
    Tensor idx = b.zeros(DType::I32, {N, k}), w = b.zeros(DType::F32, {N, k});
    b.gpu.router_forward(probs, lse, idx, w, b.upload(r.logits, DType::F32, {N, E}), normalize);

    const std::vector<int32_t> gpu_idx = b.download_ids(idx);
    REQUIRE(gpu_idx == r.idx);
    // The ties, spelled out: equal probabilities go to the lower expert.
    for (int64_t j = 0; j < k; ++j) REQUIRE(gpu_idx[j] == j);
    REQUIRE(gpu_idx[k] == 1);
    if (k > 1) REQUIRE(gpu_idx[k + 1] == 3);
    if (k > 2) REQUIRE(gpu_idx[k + 2] == E - 1);
    require_near("probs", b.download(probs), r.probs, kRtol, kAtol);
    require_near("lse", b.download(lse), r.lse, kRtol, kAtol);
    require_near("topk_w", b.download(w), r.w, kRtol, kAtol);
}

void check_backward(Backends& b, int64_t N, int64_t E, int64_t k, bool normalize, bool with_topk) {
    INFO("N " << N << ", E " << E << ", k " << k << ", normalize " << normalize << ", dtopk_w " << with_topk);
    Rng rng(uint64_t(E * 10 + k), "router backward");
    Router r(N, E, k, rng);
    r.cpu_forward(b.cpu, normalize);
    std::vector<float> dtopk = bf16_normals(N * k, rng);
    std::vector<double> aux(E);
    for (double& a : aux) a = 0.3 * rng.normal();
    const double z_coef = 0.05;
    // Nonzero starting gradients: the op must add, not overwrite.
    const std::vector<float> start = bf16_normals(N * E, rng);

    // Both backends read the same forward results (the CPU's).
    std::vector<float> expected = start;
    b.cpu.router_backward(host_tensor(expected, {N, E}), with_topk ? host_tensor(dtopk, {N, k}) : Tensor{},
                          host_tensor(r.probs, {N, E}), host_tensor(r.lse, {N}), host_ids(r.idx, {N, k}),
                          host_tensor(r.w, {N, k}), normalize, aux, z_coef);
    Tensor dlogits = b.upload(start, DType::F32, {N, E});
    b.gpu.router_backward(dlogits, with_topk ? b.upload(dtopk, DType::F32, {N, k}) : Tensor{},
                          b.upload(r.probs, DType::F32, {N, E}), b.upload(r.lse, DType::F32, {N}),
                          b.upload_ids(r.idx, {N, k}), b.upload(r.w, DType::F32, {N, k}), normalize, aux, z_coef);
    require_near("dlogits", b.download(dlogits), expected, kRtol, kBackwardAtol);
}

}  // namespace

TEST_CASE("cuda router_forward matches the CPU, ties to the lower expert", "[gpu]") {
    Backends b;
    for (int64_t k : {1, 2})
        for (bool normalize : {true, false}) check_forward(b, 50, 6, k, normalize);
    check_forward(b, 37, 100, 3, false);  // E over a warp, not a multiple of 32
    check_forward(b, 300, 256, 8, true);
}

TEST_CASE("cuda router_backward matches the CPU and accumulates", "[gpu]") {
    Backends b;
    for (int64_t k : {1, 2})
        for (bool normalize : {true, false})
            for (bool with_topk : {true, false}) check_backward(b, 50, 6, k, normalize, with_topk);
    check_backward(b, 37, 100, 3, false, true);
    check_backward(b, 300, 256, 8, true, true);
}

TEST_CASE("cuda router_stats matches the CPU and gives the same bits on every call", "[gpu]") {
    Backends b;
    for (auto [N, E] : {std::pair<int64_t, int64_t>{1000, 6}, {5000, 256}}) {
        INFO("N " << N << ", E " << E);
        Rng rng(uint64_t(E), "router stats");
        Router r(N, E, 1, rng);
        r.cpu_forward(b.cpu, true);
        std::vector<double> expected(size_t(E + 1));
        b.cpu.router_stats(Tensor(expected.data(), DType::F64, {E + 1}), host_tensor(r.probs, {N, E}),
                           host_tensor(r.lse, {N}));

        Tensor probs = b.upload(r.probs, DType::F32, {N, E}), lse = b.upload(r.lse, DType::F32, {N});
        Tensor stats = b.zeros(DType::F64, {E + 1}), stats_again = b.zeros(DType::F64, {E + 1});
        b.gpu.router_stats(stats, probs, lse);
        b.gpu.router_stats(stats_again, probs, lse);
        std::vector<double> got(size_t(E + 1)), got_again(size_t(E + 1));
        b.gpu.copy_to_host(got.data(), stats);
        b.gpu.copy_to_host(got_again.data(), stats_again);
        REQUIRE(got == got_again);
        // Sums in double of the same floats in another order: ~N ulp of double.
        for (size_t e = 0; e < got.size(); ++e) REQUIRE(std::fabs(got[e] - expected[e]) <= 1e-12 * expected[e]);
    }
}

TEST_CASE("cuda router ops reject wrong dtypes and shapes", "[gpu]") {
    Backends b;
    const int64_t N = 4, E = 6, k = 2;
    Tensor logits = b.zeros(DType::F32, {N, E}), probs = b.zeros(DType::F32, {N, E}), lse = b.zeros(DType::F32, {N});
    Tensor idx = b.zeros(DType::I32, {N, k});
    REQUIRE_THROWS_AS(b.gpu.router_forward(probs, lse, idx, b.zeros(DType::BF16, {N, k}), logits, true),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_forward(probs, lse, idx, b.zeros(DType::F32, {N, k + 1}), logits, true),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_backward(b.zeros(DType::F32, {N, E}), Tensor{}, probs, lse, idx,
                                            b.zeros(DType::F32, {N, k}), true, std::vector<double>(E - 1), 0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_stats(b.zeros(DType::F32, {E + 1}), probs, lse), std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_stats(b.zeros(DType::F64, {E}), probs, lse), std::invalid_argument);
}
