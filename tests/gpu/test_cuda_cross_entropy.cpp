// The CUDA cross-entropy against the CPU reference, with a large and a -inf
// logit: losses alone and with the gradient (the same bits), the gradient
// into a separate buffer and in place over the logits (the same bits); a bad
// target turns into NaN instead of being ignored.
#include <cmath>
#include <stdexcept>
#include <vector>

#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

// Losses ~10 in fp32: lse from per-thread sums of up to 40 exponentials
// (relative rounding <= 48 * 2^-24 = 3e-6 worst case with the rescales,
// absolute in the log) then a tree; the CPU sums in double.
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

    std::vector<float> losses(static_cast<size_t>(N)), dlogits(r.logits.size());
    b.cpu.cross_entropy(host_tensor(losses, {N}), host_tensor(dlogits, {N, V}), cpu_logits, cpu_targets, kDloss);
    Tensor loss_only = b.zeros(DType::F32, {N});
    b.gpu.cross_entropy(loss_only, {}, logits, targets, 0);
    require_near("losses", b.download(loss_only), losses, kLossRtol, kLossAtol);

    // Into another buffer, which starts nonzero: it is overwritten.
    Tensor gpu_losses = b.zeros(DType::F32, {N});
    Tensor gpu_dlogits = b.upload(bf16_normals(N * V, rng), DType::BF16, {N, V});
    b.gpu.cross_entropy(gpu_losses, gpu_dlogits, logits, targets, kDloss);
    REQUIRE(b.download(gpu_losses) == b.download(loss_only));
    require_near("dlogits", b.download(gpu_dlogits), dlogits, kBf16Rtol, kGradAtol);
    // In place over the logits, as the model calls it: the same bits.
    const std::vector<float> separate = b.download(gpu_dlogits);
    b.gpu.cross_entropy(gpu_losses, logits, logits, targets, kDloss);
    REQUIRE(b.download(gpu_losses) == b.download(loss_only));
    REQUIRE(b.download(logits) == separate);
}

}  // namespace

// V 1000 and 32768 in 16-byte chunks, 1001 element by element; 40000 and
// 5001 past what a block keeps in registers (32768 and 4096), the rest of
// each row read again for its gradient.
TEST_CASE("cuda cross_entropy matches the CPU, in place too", "[gpu]") {
    Backends b;
    check_cross_entropy(b, 8, 1000);
    check_cross_entropy(b, 8, 1001);
    check_cross_entropy(b, 4, 32768);
    check_cross_entropy(b, 3, 40000);
    check_cross_entropy(b, 3, 5001);
}

TEST_CASE("cuda cross_entropy turns a target outside the vocabulary into NaN", "[gpu]") {
    Backends b;
    const int64_t N = 3, V = 16;
    Rng rng(3, "cuda cross entropy bad target");
    Tensor logits = b.upload(bf16_normals(N * V, rng), DType::BF16, {N, V});
    Tensor targets = b.upload_ids({2, int32_t(V), -1}, {N});
    Tensor losses = b.zeros(DType::F32, {N});
    b.gpu.cross_entropy(losses, logits, logits, targets, 1.0);
    const std::vector<float> l = b.download(losses);
    REQUIRE(std::isfinite(l[0]));
    REQUIRE(std::isnan(l[1]));
    REQUIRE(std::isnan(l[2]));
    const std::vector<float> g = b.download(logits);
    for (int64_t i = 0; i < V; ++i) {
        REQUIRE(std::isfinite(g[i]));
        REQUIRE(std::isnan(g[V + i]));
        REQUIRE(std::isnan(g[2 * V + i]));
    }
}

TEST_CASE("cuda cross_entropy rejects wrong dtypes and shapes", "[gpu]") {
    Backends b;
    const int64_t N = 2, V = 8;
    Tensor logits = b.zeros(DType::BF16, {N, V}), targets = b.zeros(DType::I32, {N});
    Tensor losses = b.zeros(DType::F32, {N});
    REQUIRE_THROWS_AS(b.gpu.cross_entropy(b.zeros(DType::BF16, {N}), {}, logits, targets, 0), std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy(losses, {}, b.zeros(DType::F32, {N, V}), targets, 0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy(losses, b.zeros(DType::F32, {N, V}), logits, targets, 1.0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy(losses, b.zeros(DType::BF16, {N, V + 1}), logits, targets, 1.0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy(b.zeros(DType::F32, {N + 1}), {}, logits, targets, 0),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.cross_entropy(b.zeros(DType::F32, {N + 1}), {}, logits, b.zeros(DType::I32, {N + 1}), 0),
                      std::invalid_argument);
}
