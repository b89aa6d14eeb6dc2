// Attention of new queries over a KV cache on the GPU (generation): query i
// at position first + i reads the cached keys and values 0..first+i of its kv
// head, softmax(q k^T / sqrt(hd)) v. A step decodes one row, so the flash
// kernels' 64-query tiles would sit mostly empty; here one block serves one
// (query, head) pair and its warps split the keys.
//
// Each warp walks keys warp, warp + kWarps, ... with an online softmax in
// fp32 (running max, sum and output); a lane holds the head elements lane,
// lane + 32, ... of q and of the output, and a warp-wide sum gives each score.
// The warps' partial results merge in shared memory in warp order: a fixed
// order, so a call repeats bit for bit. Inputs and output are bf16.
#include <cmath>

#include "kernels/attention_dims.h"
#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;

constexpr int kWarps = 8;

// kPer = head elements per lane (hd <= 32 * kPer).
template <int kPer>
__global__ void decode_kernel(bf16* out, const bf16* q, const bf16* k, const bf16* v, int64_t nh, int64_t nkv, int hd,
                              int64_t first, float scale) {
    __shared__ float warp_max[kWarps], warp_sum[kWarps];
    __shared__ float warp_out[kWarps][32 * kPer];
    const int64_t i = blockIdx.x / nh, h = blockIdx.x % nh, kvh = h / (nh / nkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t stride = nkv * hd, last = first + i;
    const bf16* qi = q + (i * nh + h) * hd;
    float qv[kPer], acc[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
        const int e = lane + 32 * j;
        qv[j] = e < hd ? cuda::load(qi, e) : 0.f;
        acc[j] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int64_t s = warp; s <= last; s += kWarps) {
        const bf16 *ks = k + s * stride + kvh * hd, *vs = v + s * stride + kvh * hd;
        float partial = 0.f;
#pragma unroll
        for (int j = 0; j < kPer; ++j)
            if (lane + 32 * j < hd) partial += qv[j] * cuda::load(ks, lane + 32 * j);
        const float score = scale * cuda::warp_sum(partial);
        const float m_new = fmaxf(m, score), keep = expf(m - m_new), p = expf(score - m_new);
        l = l * keep + p;
#pragma unroll
        for (int j = 0; j < kPer; ++j)
            acc[j] = acc[j] * keep + (lane + 32 * j < hd ? p * cuda::load(vs, lane + 32 * j) : 0.f);
        m = m_new;
    }
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) warp_out[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    // Warps that saw no key (a short cache) hold max -inf and weigh 0.
    float top = -INFINITY;
    for (int w = 0; w < kWarps; ++w) top = fmaxf(top, warp_max[w]);
    float total = 0.f;
    for (int w = 0; w < kWarps; ++w) total += warp_sum[w] * expf(warp_max[w] - top);
    for (int e = threadIdx.x; e < hd; e += blockDim.x) {
        float o = 0.f;
        for (int w = 0; w < kWarps; ++w) o += warp_out[w][e] * expf(warp_max[w] - top);
        cuda::store(out + (i * nh + h) * hd, e, o / total);
    }
}

}  // namespace

void CudaOps::attention_decode(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, int64_t first_position) {
    const char* op = "attention_decode";
    const DecodeDims d = decode_dims(op, out, q, k_cache, v_cache, first_position);
    cuda::require_dtype(op, "out", out, DType::BF16);
    cuda::require_dtype(op, "q", q, DType::BF16);
    cuda::require_dtype(op, "k_cache", k_cache, DType::BF16);
    cuda::require_dtype(op, "v_cache", v_cache, DType::BF16);
    check(d.hd <= kMaxDecodeHeadDim, op,
          "head size " + std::to_string(d.hd) + " is above " + std::to_string(kMaxDecodeHeadDim));
    if (d.n == 0) return;
    const float scale = float(1.0 / std::sqrt(double(d.hd)));
    const auto launch = [&](auto kernel) {
        kernel<<<unsigned(d.n * d.nh), 32 * kWarps, 0, stream()>>>(
            static_cast<bf16*>(out.data), static_cast<const bf16*>(q.data), static_cast<const bf16*>(k_cache.data),
            static_cast<const bf16*>(v_cache.data), d.nh, d.nkv, int(d.hd), d.first, scale);
    };
    if (d.hd <= 32) launch(decode_kernel<1>);
    else if (d.hd <= 64) launch(decode_kernel<2>);
    else if (d.hd <= 128) launch(decode_kernel<4>);
    else launch(decode_kernel<8>);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
