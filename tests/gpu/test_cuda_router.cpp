// The CUDA router ops against the CPU reference on the same fp32 values: the
// softmax and top-k (ties to the lower expert, E not a power of two, E above
// a warp), the backward with and without the top-k term, and router_stats,
// which must also give the same bits on every call; and the router options
// (sigmoid scores, a choice bias, group-limited choice).
#include <algorithm>
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

// The router options a check runs with; the bias, when used, is random.
struct Options {
    bool sigmoid = false, bias = false;
    int groups = 1, group_limit = 1;
};

// The router's host tensors for the CPU op, and their device copies.
struct Router {
    int64_t N, E, k;
    std::vector<float> logits, probs, lse, w, bias;
    std::vector<int32_t> idx;
    RouterScoring scoring;  // on the host (its bias the host vector)

    Router(int64_t N_, int64_t E_, int64_t k_, Rng& rng, bool normalize, const Options& o = {})
        : N(N_), E(E_), k(k_), logits(router_logits(N, E, rng)), probs(N * E), lse(N), w(N * k), idx(N * k) {
        scoring.normalize = normalize;
        scoring.sigmoid = o.sigmoid;
        scoring.groups = o.groups;
        scoring.group_limit = o.group_limit;
        if (o.bias) {
            bias = bf16_normals(E, rng, 0.2);
            scoring.bias = host_tensor(bias, {E});
        }
    }
    // The same scoring with the bias on the device.
    RouterScoring on_device(Backends& b) const {
        RouterScoring s = scoring;
        if (!bias.empty()) s.bias = b.upload(bias, DType::F32, {E});
        return s;
    }

    void cpu_forward(CpuOps& cpu) {
        cpu.router_forward(host_tensor(probs, {N, E}), host_tensor(lse, {N}), host_ids(idx, {N, k}),
                           host_tensor(w, {N, k}), host_tensor(logits, {N, E}), scoring);
    }
    // Whether row n's choice is clear: the keys at its boundary (the k-th and
    // the next allowed one) differ by more than fp32 and double can disagree.
    bool clear_choice(int64_t n) const {
        if (bias.empty() && scoring.groups == 1) return true;  // keys are the probs: bf16 logits keep them apart
        std::vector<float> key(static_cast<size_t>(E));
        for (int64_t e = 0; e < E; ++e) key[size_t(e)] = probs[n * E + e] + (bias.empty() ? 0.f : bias[size_t(e)]);
        std::vector<float> sorted(key);
        std::sort(sorted.rbegin(), sorted.rend());
        for (size_t i = 0; i + 1 < sorted.size(); ++i)
            if (sorted[i] - sorted[i + 1] < 1e-5f) return false;  // groups' sums too
        return true;
    }
};

void check_forward(Backends& b, int64_t N, int64_t E, int64_t k, bool normalize) {
    INFO("N " << N << ", E " << E << ", k " << k << ", normalize " << normalize);
    Rng rng(uint64_t(E * 10 + k), "router forward");
    Router r(N, E, k, rng, normalize);
    r.cpu_forward(b.cpu);

    Tensor probs = b.zeros(DType::F32, {N, E}), lse = b.zeros(DType::F32, {N});
    Tensor idx = b.zeros(DType::I32, {N, k}), w = b.zeros(DType::F32, {N, k});
    b.gpu.router_forward(probs, lse, idx, w, b.upload(r.logits, DType::F32, {N, E}), r.on_device(b));

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

void check_backward(Backends& b, int64_t N, int64_t E, int64_t k, bool normalize, bool with_topk,
                    const Options& o = {}) {
    INFO("N " << N << ", E " << E << ", k " << k << ", normalize " << normalize << ", dtopk_w " << with_topk
              << ", sigmoid " << o.sigmoid);
    Rng rng(uint64_t(E * 10 + k), "router backward");
    Router r(N, E, k, rng, normalize, o);
    r.cpu_forward(b.cpu);
    std::vector<float> dtopk = bf16_normals(N * k, rng);
    std::vector<double> aux(E);
    for (double& a : aux) a = 0.3 * rng.normal();
    const double z_coef = o.sigmoid ? 0 : 0.05;
    // Nonzero starting gradients: the op must add, not overwrite.
    const std::vector<float> start = bf16_normals(N * E, rng);

    // Both backends read the same forward results (the CPU's).
    std::vector<float> expected = start;
    b.cpu.router_backward(host_tensor(expected, {N, E}), with_topk ? host_tensor(dtopk, {N, k}) : Tensor{},
                          host_tensor(r.probs, {N, E}), host_tensor(r.lse, {N}), host_ids(r.idx, {N, k}),
                          host_tensor(r.w, {N, k}), r.scoring, aux, z_coef);
    Tensor dlogits = b.upload(start, DType::F32, {N, E});
    b.gpu.router_backward(dlogits, with_topk ? b.upload(dtopk, DType::F32, {N, k}) : Tensor{},
                          b.upload(r.probs, DType::F32, {N, E}), b.upload(r.lse, DType::F32, {N}),
                          b.upload_ids(r.idx, {N, k}), b.upload(r.w, DType::F32, {N, k}), r.on_device(b), aux,
                          z_coef);
    require_near("dlogits", b.download(dlogits), expected, kRtol, kBackwardAtol);
}

// The options' forward: scores and lse everywhere, the choice and weights on
// the rows whose choice is clear (most of them).
void check_forward_options(Backends& b, int64_t N, int64_t E, int64_t k, const Options& o) {
    INFO("N " << N << ", E " << E << ", k " << k << ", sigmoid " << o.sigmoid << ", bias " << o.bias << ", groups "
              << o.groups << " limit " << o.group_limit);
    Rng rng(uint64_t(E * 10 + k + o.groups), "router options");
    Router r(N, E, k, rng, true, o);
    r.cpu_forward(b.cpu);
    Tensor probs = b.zeros(DType::F32, {N, E}), lse = b.zeros(DType::F32, {N});
    Tensor idx = b.zeros(DType::I32, {N, k}), w = b.zeros(DType::F32, {N, k});
    b.gpu.router_forward(probs, lse, idx, w, b.upload(r.logits, DType::F32, {N, E}), r.on_device(b));
    require_near("probs", b.download(probs), r.probs, kRtol, kAtol);
    require_near("lse", b.download(lse), r.lse, kRtol, kAtol);
    const std::vector<int32_t> gpu_idx = b.download_ids(idx);
    const std::vector<float> gpu_w = b.download(w);
    int64_t clear = 0;
    for (int64_t n = 0; n < N; ++n) {
        if (!r.clear_choice(n)) continue;
        ++clear;
        for (int64_t j = 0; j < k; ++j) {
            REQUIRE(gpu_idx[n * k + j] == r.idx[n * k + j]);
            REQUIRE(std::fabs(gpu_w[n * k + j] - r.w[n * k + j]) <= kRtol * std::fabs(r.w[n * k + j]) + kAtol);
        }
    }
    REQUIRE(clear > N / 2);
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
    for (bool sigmoid : {false, true})
    for (auto [N, E] : {std::pair<int64_t, int64_t>{1000, 6}, {5000, 256}}) {
        INFO("N " << N << ", E " << E << ", sigmoid " << sigmoid);
        Rng rng(uint64_t(E), "router stats");
        Options o;
        o.sigmoid = sigmoid;
        Router r(N, E, 1, rng, true, o);
        r.cpu_forward(b.cpu);
        std::vector<double> expected(size_t(E + 1));
        b.cpu.router_stats(Tensor(expected.data(), DType::F64, {E + 1}), host_tensor(r.probs, {N, E}),
                           host_tensor(r.lse, {N}), r.scoring);

        Tensor probs = b.upload(r.probs, DType::F32, {N, E}), lse = b.upload(r.lse, DType::F32, {N});
        Tensor stats = b.zeros(DType::F64, {E + 1}), stats_again = b.zeros(DType::F64, {E + 1});
        b.gpu.router_stats(stats, probs, lse, r.scoring);
        b.gpu.router_stats(stats_again, probs, lse, r.scoring);
        std::vector<double> got(size_t(E + 1)), got_again(size_t(E + 1));
        b.gpu.copy_to_host(got.data(), stats);
        b.gpu.copy_to_host(got_again.data(), stats_again);
        REQUIRE(got == got_again);
        // Sums in double of the same floats in another order: ~N ulp of
        // double; sigmoid's q also takes exp(-lse) in the GPU's double exp.
        for (size_t e = 0; e < got.size(); ++e) REQUIRE(std::fabs(got[e] - expected[e]) <= 1e-12 * expected[e]);
    }
}

TEST_CASE("cuda router options match the CPU: sigmoid scores, a choice bias, group-limited choice", "[gpu]") {
    Backends b;
    for (bool sigmoid : {false, true}) {
        Options o;
        o.sigmoid = sigmoid;
        check_forward_options(b, 300, 6, 2, o);
        o.bias = true;
        check_forward_options(b, 300, 64, 6, o);
        o.groups = 8;
        o.group_limit = 3;
        check_forward_options(b, 300, 64, 6, o);
        o.groups = 64;  // a group an expert, 64 groups: the mask's every bit
        o.group_limit = 4;
        check_forward_options(b, 300, 64, 4, o);
        Options six = o;  // 64 groups cannot split 6 experts: 3 groups of 2, top-2 within 2 of them
        six.groups = 3;
        six.group_limit = 2;
        for (bool normalize : {true, false}) check_backward(b, 50, 6, 2, normalize, true, six);
        check_backward(b, 300, 256, 8, true, true, o);
    }
}

TEST_CASE("cuda router ops reject wrong dtypes and shapes", "[gpu]") {
    Backends b;
    const int64_t N = 4, E = 6, k = 2;
    Tensor logits = b.zeros(DType::F32, {N, E}), probs = b.zeros(DType::F32, {N, E}), lse = b.zeros(DType::F32, {N});
    Tensor idx = b.zeros(DType::I32, {N, k});
    const RouterScoring plain;
    REQUIRE_THROWS_AS(b.gpu.router_forward(probs, lse, idx, b.zeros(DType::BF16, {N, k}), logits, plain),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_forward(probs, lse, idx, b.zeros(DType::F32, {N, k + 1}), logits, plain),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_backward(b.zeros(DType::F32, {N, E}), Tensor{}, probs, lse, idx,
                                            b.zeros(DType::F32, {N, k}), plain, std::vector<double>(E - 1), 0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_stats(b.zeros(DType::F32, {E + 1}), probs, lse, plain), std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.router_stats(b.zeros(DType::F64, {E}), probs, lse, plain), std::invalid_argument);
    RouterScoring groups;
    groups.groups = 3;  // E = 6: 2 experts a group, one group reachable, top-2 fits; 4 groups do not divide
    groups.group_limit = 1;
    REQUIRE_NOTHROW(b.gpu.router_forward(probs, lse, idx, b.zeros(DType::F32, {N, k}), logits, groups));
    groups.groups = 4;
    REQUIRE_THROWS_AS(b.gpu.router_forward(probs, lse, idx, b.zeros(DType::F32, {N, k}), logits, groups),
                      std::invalid_argument);
    RouterScoring sigmoid;
    sigmoid.sigmoid = true;
    REQUIRE_THROWS_AS(b.gpu.router_backward(b.zeros(DType::F32, {N, E}), Tensor{}, probs, lse, idx,
                                            b.zeros(DType::F32, {N, k}), sigmoid, std::vector<double>(E), 0.1),
                      std::invalid_argument);
}
