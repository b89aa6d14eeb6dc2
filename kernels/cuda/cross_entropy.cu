// Cross-entropy on the GPU over bf16 logits [N,V]: one block per row, each
// thread keeping a running max and sum of exponentials in fp32 over its part
// of the row (one pass, no fp32 copy of the logits), merged by a fixed tree;
// the forward keeps each row's logsumexp. The backward is then one pass that
// reads each logit once and overwrites it with its gradient (each thread
// writes only what it read), so dlogits may be the logits buffer. A target
// outside [0, V) is a data error (MODEL.md) the host cannot see without a sync: it
// gives a NaN loss and NaN gradients, which the trainer stops on.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
using cuda::load_chunk;
using cuda::store_chunk;
using cuda::require_dtype;

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// Softmax statistics of a set of logits: their max m and sum of exp(x - m).
// m starts at -FLT_MAX, not -inf, so a -inf logit adds exp(-inf) = 0, not NaN.
struct MaxSum {
    float m, s;
};
__device__ __forceinline__ MaxSum no_logits() { return {-FLT_MAX, 0}; }

__device__ __forceinline__ void add(MaxSum& a, float x) {
    if (x > a.m) {
        a.s = a.s * expf(a.m - x) + 1;
        a.m = x;
    } else {
        a.s += expf(x - a.m);
    }
}
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}
__device__ __forceinline__ MaxSum warp_merge(MaxSum x) {
    for (int o = 16; o > 0; o >>= 1)
        x = merge(x, {__shfl_xor_sync(kFullMask, x.m, o), __shfl_xor_sync(kFullMask, x.s, o)});
    return x;
}

// The statistics of row [0, V), every thread getting the block's result.
// Thread t takes the chunks t, t + blockDim, ... in order.
template <int W> __device__ MaxSum row_stats(const bf16* row, int64_t V) {
    __shared__ MaxSum warp_part[32];
    __shared__ MaxSum total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    MaxSum a = no_logits();
    for (int64_t c = int64_t(threadIdx.x) * W; c < V; c += int64_t(blockDim.x) * W) {
        float x[W];
        load_chunk<W>(x, row + c);
#pragma unroll
        for (int e = 0; e < W; ++e) add(a, x[e]);
    }
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

template <int W>
__global__ void cross_entropy_forward_kernel(float* losses, float* lse, const bf16* logits, const int32_t* targets,
                                             int64_t V) {
    const bf16* row = logits + int64_t(blockIdx.x) * V;
    const MaxSum st = row_stats<W>(row, V);
    if (threadIdx.x == 0) {
        const int32_t t = targets[blockIdx.x];
        const float row_lse = st.m + logf(st.s);
        losses[blockIdx.x] = t >= 0 && t < V ? row_lse - __bfloat162float(row[t]) : NAN;
        if (lse) lse[blockIdx.x] = row_lse;
    }
}

// dlogits = dloss (exp(x - lse) - onehot(target)); dlogits may alias logits.
template <int W>
__global__ void cross_entropy_backward_kernel(bf16* dlogits, const bf16* logits, const float* lse,
                                              const int32_t* targets, int64_t V, float dloss) {
    const bf16* row = logits + int64_t(blockIdx.x) * V;
    bf16* grad = dlogits + int64_t(blockIdx.x) * V;
    const int32_t t = targets[blockIdx.x];
    const bool valid = t >= 0 && t < V;
    const float row_lse = lse[blockIdx.x];
    for (int64_t c = int64_t(threadIdx.x) * W; c < V; c += int64_t(blockDim.x) * W) {
        float x[W];
        load_chunk<W>(x, row + c);
#pragma unroll
        for (int e = 0; e < W; ++e) x[e] = valid ? dloss * (expf(x[e] - row_lse) - (c + e == t ? 1.0f : 0.0f)) : NAN;
        store_chunk<W>(grad + c, x);
    }
}

// logits BF16 [N,V] with N < 2^31 (one block per row), targets I32 [N].
void check_inputs(const char* op, const Tensor& logits, const Tensor& targets) {
    require_dtype(op, "logits", logits, DType::BF16);
    require_dtype(op, "targets", targets, DType::I32);
    check(logits.ndim == 2 && targets.numel() == logits.dim(0) && logits.dim(0) <= INT_MAX, op,
          "expected logits [N,V] and targets [N]; got " + logits.shape_str() + " and " + targets.shape_str());
}

}  // namespace

void CudaOps::cross_entropy_forward(Tensor losses, Tensor lse, Tensor logits, Tensor targets) {
    const char* op = "cross_entropy_forward";
    check_inputs(op, logits, targets);
    require_dtype(op, "losses", losses, DType::F32);
    require_dtype(op, "lse", lse, DType::F32);
    check(losses.numel() == logits.dim(0) && (lse.empty() || lse.numel() == logits.dim(0)), op,
          "losses " + losses.shape_str() + " and lse " + lse.shape_str() + " for logits " + logits.shape_str());
    const int64_t N = logits.dim(0), V = logits.dim(1);
    if (N == 0) return;
    const auto* x = static_cast<const bf16*>(logits.data);
    cuda::with_chunk_width(V, {x}, [&](auto width) {
        cross_entropy_forward_kernel<decltype(width)::value><<<unsigned(N), kThreads, 0, stream()>>>(
            losses.ptr<float>(), lse.empty() ? nullptr : lse.ptr<float>(), x, targets.ptr<int32_t>(), V);
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::cross_entropy_backward(Tensor dlogits, Tensor logits, Tensor lse, Tensor targets, double dloss) {
    const char* op = "cross_entropy_backward";
    check_inputs(op, logits, targets);
    require_dtype(op, "dlogits", dlogits, DType::BF16);
    require_dtype(op, "lse", lse, DType::F32);
    check(dlogits.numel() == logits.numel() && lse.numel() == logits.dim(0), op,
          "dlogits " + dlogits.shape_str() + " and lse " + lse.shape_str() + " must match logits " +
              logits.shape_str() + " (the forward's lse [N])");
    const int64_t N = logits.dim(0), V = logits.dim(1);
    if (N == 0) return;
    const auto* x = static_cast<const bf16*>(logits.data);
    auto* g = static_cast<bf16*>(dlogits.data);
    cuda::with_chunk_width(V, {x, g}, [&](auto width) {
        cross_entropy_backward_kernel<decltype(width)::value><<<unsigned(N), kThreads, 0, stream()>>>(
            g, x, lse.ptr<float>(), targets.ptr<int32_t>(), V, float(dloss));
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
