// Cross-entropy on the GPU over bf16 logits [N,V]: one block per row, each
// thread keeping a running max and sum of exponentials in fp32 over its part
// of the row (no fp32 copy of the logits), merged by a fixed tree; with a
// gradient wanted, the same block then writes it from the logits it holds in
// registers, so the loss and its gradient cost one read of the logits and one
// write. Its exponentials, two an element, are exp_ftz (fast_math.cuh). A
// target outside [0, V) is a data error (MODEL.md) the host cannot see
// without a sync: it gives a NaN loss and NaN gradients, which the trainer
// stops on.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fast_math.cuh"

namespace moe {

namespace {

using cuda::bf16;
using cuda::exp_ftz;
using cuda::store_chunk;
using cuda::require_dtype;

constexpr unsigned kFullMask = 0xffffffffu;

// Softmax statistics of a set of logits: their max m and sum of exp(x - m).
// m starts at -FLT_MAX, not -inf, so a -inf logit adds exp(-inf) = 0, not NaN.
struct MaxSum {
    float m, s;
};
__device__ __forceinline__ MaxSum no_logits() { return {-FLT_MAX, 0}; }

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    return {m, a.s * exp_ftz(a.m - m) + b.s * exp_ftz(b.m - m)};
}
__device__ __forceinline__ MaxSum warp_merge(MaxSum x) {
    for (int o = 16; o > 0; o >>= 1)
        x = merge(x, {__shfl_xor_sync(kFullMask, x.m, o), __shfl_xor_sync(kFullMask, x.s, o)});
    return x;
}

// W bf16 as stored: one 16-byte access at W = 8. A thread keeps the first
// kKept of its chunks this way (4 registers each at W = 8) between the pass
// that sums a row and the pass that writes its gradient, so rows of up to
// kThreads * kKept * W logits (32768 at W = 8) are read from memory once.
template <int W> struct alignas(2 * W) Chunk {
    bf16 v[W];
};
constexpr int kThreads = 1024;
constexpr int kKept = 4;

// Adds a chunk at its own max: one rescale of the running sum at most, no
// branch per logit.
template <int W> __device__ __forceinline__ void add_chunk(MaxSum& a, const Chunk<W>& x) {
    float m = a.m;
#pragma unroll
    for (int e = 0; e < W; ++e) m = fmaxf(m, __bfloat162float(x.v[e]));
    float s = a.s * exp_ftz(a.m - m);
#pragma unroll
    for (int e = 0; e < W; ++e) s += exp_ftz(__bfloat162float(x.v[e]) - m);
    a = {m, s};
}

// Merges every thread's statistics by a fixed tree; all threads get the row's.
__device__ MaxSum block_merge(MaxSum a) {
    __shared__ MaxSum warp_part[32];
    __shared__ MaxSum total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a = warp_merge(a);
    if (lane == 0) warp_part[warp] = a;
    __syncthreads();
    if (warp == 0) {
        a = warp_merge(lane < int(blockDim.x >> 5) ? warp_part[lane] : no_logits());
        if (lane == 0) total = a;
    }
    __syncthreads();
    return total;
}

// dloss (exp(x - lse) - onehot(target)) for the chunk at column c.
template <int W>
__device__ __forceinline__ void store_gradient(bf16* grad, int c, const Chunk<W>& x, float row_lse, int32_t t,
                                               float dloss) {
    float g[W];
#pragma unroll
    for (int e = 0; e < W; ++e)
        g[e] = dloss * (exp_ftz(__bfloat162float(x.v[e]) - row_lse) - (c + e == t ? 1.0f : 0.0f));
    store_chunk<W>(grad + c, g);
}

// One block per row. Thread t takes the chunks t, t + kThreads, ... in order,
// keeping the first kKept; a row longer than that reads the rest again for
// its gradient (from L2 while the row is fresh). dlogits (null: loss only)
// may be logits: each thread writes only the chunks it read itself.
template <int W>
__global__ void __launch_bounds__(kThreads, 1) cross_entropy_kernel(float* losses, bf16* dlogits, const bf16* logits,
                                                                 const int32_t* targets, int V, float dloss) {
    const bf16* row = logits + int64_t(blockIdx.x) * V;
    const int stride = kThreads * W, first = int(threadIdx.x) * W;
    Chunk<W> kept[kKept];
    MaxSum a = no_logits();
#pragma unroll
    for (int i = 0; i < kKept; ++i) {
        const int c = first + i * stride;
        if (c < V) {
            kept[i] = *reinterpret_cast<const Chunk<W>*>(row + c);
            add_chunk(a, kept[i]);
        }
    }
    for (int c = first + kKept * stride; c < V; c += stride) add_chunk(a, *reinterpret_cast<const Chunk<W>*>(row + c));
    const int32_t t = targets[blockIdx.x];
    const bool valid = t >= 0 && t < V;
    // The target's logit, read before the merge's barrier: after it, its
    // chunk's owner may write the gradient over it.
    const float target_logit = threadIdx.x == 0 && valid ? __bfloat162float(row[t]) : 0;
    const MaxSum st = block_merge(a);

    const float row_lse = st.m + logf(st.s);
    if (threadIdx.x == 0) losses[blockIdx.x] = valid ? row_lse - target_logit : NAN;
    if (!dlogits) return;
    // An invalid target poisons the whole row (NaN), as it does the loss.
    const float scale = valid ? dloss : NAN;
    bf16* grad = dlogits + int64_t(blockIdx.x) * V;
#pragma unroll
    for (int i = 0; i < kKept; ++i) {
        const int c = first + i * stride;
        if (c < V) store_gradient(grad, c, kept[i], row_lse, t, scale);
    }
    for (int c = first + kKept * stride; c < V; c += stride)
        store_gradient(grad, c, *reinterpret_cast<const Chunk<W>*>(row + c), row_lse, t, scale);
}

// logits BF16 [N,V] with N and V < 2^31 (one block per row), targets I32 [N].
void check_inputs(const char* op, const Tensor& logits, const Tensor& targets) {
    require_dtype(op, "logits", logits, DType::BF16);
    require_dtype(op, "targets", targets, DType::I32);
    check(logits.ndim == 2 && targets.numel() == logits.dim(0) && logits.dim(0) <= INT_MAX &&
              logits.dim(1) <= INT_MAX - kThreads * 8, op,
          "expected logits [N,V] and targets [N]; got " + logits.shape_str() + " and " + targets.shape_str());
}

}  // namespace

void CudaOps::cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dloss) {
    const char* op = "cross_entropy";
    check_inputs(op, logits, targets);
    require_dtype(op, "losses", losses, DType::F32);
    require_dtype(op, "dlogits", dlogits, DType::BF16);
    check(losses.numel() == logits.dim(0) && (dlogits.empty() || dlogits.numel() == logits.numel()), op,
          "losses " + losses.shape_str() + " and dlogits " + dlogits.shape_str() + " for logits " +
              logits.shape_str());
    const int64_t N = logits.dim(0), V = logits.dim(1);
    if (N == 0) return;
    const auto* x = static_cast<const bf16*>(logits.data);
    auto* g = dlogits.empty() ? nullptr : static_cast<bf16*>(dlogits.data);
    cuda::with_chunk_width(V, {x, g}, [&](auto width) {
        cross_entropy_kernel<decltype(width)::value><<<unsigned(N), kThreads, 0, stream()>>>(
            losses.ptr<float>(), g, x, targets.ptr<int32_t>(), int(V), float(dloss));
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
