// The fused q, k, v projection's output split into heads and joined back
// (ops.h), bf16: one thread per head of a position and chunk of W elements
// (W = 8: 16-byte accesses).
#include "kernels/cuda/common.cuh"
#include "kernels/qkv_dims.h"

namespace moe {

namespace {

using cuda::bf16;

// Where head h of position p lives in q [.,nh,hd], k or v [.,nkv,hd].
struct Parts {
    bf16 *q, *k, *v;
    int nh, nkv, hd;
    __device__ __forceinline__ bf16* at(int64_t p, int h) const {
        if (h < nh) return q + (p * nh + h) * hd;
        if (h < nh + nkv) return k + (p * nkv + h - nh) * hd;
        return v + (p * nkv + h - nh - nkv) * hd;
    }
};

// kSplit: packed -> parts; else parts -> packed. Chunk n is elements
// i..i+W-1 of head h of position p.
template <int W, bool kSplit>
__global__ void qkv_heads_kernel(bf16* packed, Parts parts, int64_t chunks) {
    const int hd = parts.hd, per_head = hd / W, heads = parts.nh + 2 * parts.nkv;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < chunks; n += int64_t(gridDim.x) * blockDim.x) {
        const int i = int(n % per_head) * W, h = int(n / per_head % heads);
        const int64_t p = n / per_head / heads;
        bf16* row = packed + (p * heads + h) * hd + i;
        float a[W];
        if constexpr (kSplit) {
            cuda::load_chunk(a, row);
            cuda::store_chunk(parts.at(p, h) + i, a);
        } else {
            cuda::load_chunk(a, parts.at(p, h) + i);
            cuda::store_chunk(row, a);
        }
    }
}

void move_heads(CudaOps& ops, const char* op, Tensor packed, Tensor q, Tensor k, Tensor v, bool split) {
    const QkvDims d = qkv_dims(op, packed, q, k, v);
    cuda::require_dtype(op, "qkv", packed, DType::BF16);
    if (packed.numel() == 0) return;
    const Parts parts{static_cast<bf16*>(q.data), static_cast<bf16*>(k.data), static_cast<bf16*>(v.data), int(d.nh),
                      int(d.nkv), int(d.hd)};
    constexpr int kThreads = 256;
    // Chunks of 8 need hd a multiple of 8 and every tensor on 16 bytes.
    cuda::with_chunk_width(d.hd, {packed.data, q.data, k.data, v.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        const int64_t chunks = d.positions * d.heads() * (d.hd / W);
        const unsigned blocks = cuda::blocks_for(chunks, kThreads);
        bf16* at = static_cast<bf16*>(packed.data);
        if (split)
            qkv_heads_kernel<W, true><<<blocks, kThreads, 0, ops.stream()>>>(at, parts, chunks);
        else
            qkv_heads_kernel<W, false><<<blocks, kThreads, 0, ops.stream()>>>(at, parts, chunks);
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace

void CudaOps::split_qkv(Tensor q, Tensor k, Tensor v, Tensor qkv) {
    move_heads(*this, "split_qkv", qkv, q, k, v, true);
}

void CudaOps::join_qkv(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv) {
    move_heads(*this, "join_qkv", dqkv, dq, dk, dv, false);
}

}  // namespace moe
