// The CUDA cross-entropy ops against the CPU reference for V = 1000 and the
// benchmark's 32768 (16-byte chunks) and V = 1001 (the element path), with a
// large and a -inf logit: losses and the kept logsumexp, the backward from
// it into a separate buffer and in place over the logits; a bad target turns
// into NaN instead of being ignored.
#include <cmath>
#include <stdexcept>
#include <vector>

#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

// Losses ~10 in fp32: lse from per-thread sums of up to 128 exponentials
// (relative rounding <= 128 * 2^-24 = 8e-6 worst case, absolute in the
// log) then a tree; the CPU sums in double.
constexpr double kLossRtol = 1e-5, kLossAtol = 1e-5;
// A gradient is dloss * p (or p - 1) to fp32 accuracy, then rounded to
// bf16: kBf16Rtol is relative, and bf16 keeps fp32's exponent range, so
// small probabilities need no absolute slack beyond a tiny floor.
constexpr double kGradAtol = 1e-8;
constexpr double kDloss = 0.37;

struct Rows {
    int64_t N, V;
    std::vector<float> logits;
    std::vector<int32_t> targets;

    Rows(int64_t N_, int64_t V_, Rng& rng) : N(N_), V(V_), logits(bf16_normals(N * V, rng, 3.0)), targets(N) {
        for (int32_t& t : targets) t = int32_t(rng.uniform() * double(V));
        logits[V + 7] = 80.0f;  // exp(80) overflows fp32: rows must be shifted by their max
        logits[2 * V + 3] = -INFINITY;
        targets[2] = 4;  // not the -inf logit
    }
};

void check_cross_entropy(Backends& b, int64_t N, int64_t V) {
    INFO("N " << N << ", V " << V);
    Rng rng(uint64_t(V), "cuda cross entropy");
    Rows r(N, V, rng);
    Tensor cpu_logits = host_tensor(r.logits, {N, V}), cpu_targets = host_ids(r.targets, {N});
    Tensor logits = b.upload(r.logits, DType::BF16, {N, V}), targets = b.upload_ids(r.targets, {N});

    std::vector<float> losses(static_cast<size_t>(N)), lse(static_cast<size_t>(N));
    b.cpu.cross_entropy_forward(host_tensor(losses, {N}), host_tensor(lse, {N}), cpu_logits, cpu_targets);
    Tensor gpu_losses = b.zeros(DType::F32, {N}), gpu_lse = b.zeros(DType::F32, {N});
    b.gpu.cross_entropy_forward(gpu_losses, gpu_lse, logits, targets);
    require_near("losses", b.download(gpu_losses), losses, kLossRtol, kLossAtol);
    require_near("lse", b.download(gpu_lse), lse, kLossRtol, kLossAtol);

    std::vector<float> dlogits(r.logits.size());
    b.cpu.cross_entropy_backward(host_tensor(dlogits, {N, V}), cpu_logits, host_tensor(lse, {N}), cpu_targets, kDloss);
    // Into another buffer, which starts nonzero: it is overwritten.
    Tensor gpu_dlogits = b.upload(bf16_normals(N * V, rng), DType::BF16, {N, V});
    b.gpu.cross_entropy_backward(gpu_dlogits, logits, gpu_lse, targets, kDloss);
    require_near("dlogits", b.download(gpu_dlogits), dlogits, kBf16Rtol, kGradAtol);
    // In place over the logits, as the model calls it.
    b.gpu.cross_entropy_backward(logits, logits, gpu_lse, targets, kDloss);
    require_near("dlogits in place", b.download(logits), dlogits, kBf16Rtol, kGradAtol);
}

}  // namespace

TEST_CASE("cuda cross_entropy matches the CPU, in place too", "[gpu]") {
    Backends b;
    check_cross_entropy(b, 8, 1000);
    check_cross_entropy(b, 8, 1001);
    check_cross_entropy(b, 4, 32768);
}

TEST_CASE("cuda cross_entropy turns a target outside the vocabulary into NaN", "[gpu]") {
    Backends b;
    const int64_t N = 3, V = 16;
    Rng rng(3, "cuda cross entropy bad target");
    Tensor logits = b.upload(bf16_normals(N * V, rng), DType::BF16, {N, V});
    Tensor targets = b.upload_ids({2, int32_t(V), -1}, {N});
    Tensor losses = b.zeros(DType::F32, {N}), lse = b.zeros(DType::F32, {N});
    b.gpu.cross_entropy_forward(losses, lse, logits, targets);
    const std::vector<float> l = b.download(losses);
    REQUIRE(std::isfinite(l[0]));
    REQUIRE(std::isnan(l[1]));
    REQUIRE(std::isnan(l[2]));
    b.gpu.cross_entropy_backward(logits, logits, lse, targets, 1.0);
    const std::vector<float> g = b.download(logits);
    for (int64_t i = 0; i < V; ++i) {
        REQUIRE(std::isfinite(g[i]));
        REQUIRE(std::isnan(g[V + i]));
    }
}

TEST_CASE("cuda cross_entropy rejects wrong dtypes and shapes", "[gpu]") {
    Backends b;
    const int64_t N = 2, V = 8;
    Tensor logits = b.zeros(DType::BF16, {N, V}), targets = b.zeros(DType::I32, {N});
    Tensor lse = b.zeros(DType::F32, {N});
    REQUIRE_THROWS_AS(b.gpu.cross_entropy_forward(b.zeros(DType::BF16, {N}), lse, logits, targets),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy_forward(b.zeros(DType::F32, {N}), lse, b.zeros(DType::F32, {N, V}), targets),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy_forward(b.zeros(DType::F32, {N}), b.zeros(DType::F32, {N + 1}), logits,
                                                  targets),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy_backward(b.zeros(DType::F32, {N, V}), logits, lse, targets, 1.0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy_backward(logits, logits, b.zeros(DType::F32, {N + 1}), targets, 1.0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(
        b.gpu.cross_entropy_forward(b.zeros(DType::F32, {N + 1}), {}, logits, b.zeros(DType::I32, {N + 1})),
        std::invalid_argument);
}
