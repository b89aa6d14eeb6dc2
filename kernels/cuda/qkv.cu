// The fused q, k, v projection's output split into heads and joined back
// (ops.h), bf16. One thread per head of a position and chunk of W pairs
// (i, i + hd/2) of it (W = 8: 16-byte accesses); the split turns the q and
// k heads on the way with RoPE's table and turn (rope_angles.cuh), so its
// bits are rope_forward's.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rope_angles.cuh"
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

// kSplit: packed -> parts, the first `turned` heads of a position turned by
// the table's angles (turned is 0 without a table); else parts -> packed.
// Chunk n is pairs i..i+W-1 of head h of position p.
template <int W, bool kSplit>
__global__ void qkv_heads_kernel(bf16* packed, Parts parts, const float* table, int turned, int64_t chunks, int64_t T) {
    const int hd = parts.hd, half = hd / 2, per_head = half / W, heads = parts.nh + 2 * parts.nkv;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < chunks; n += int64_t(gridDim.x) * blockDim.x) {
        const int i = int(n % per_head) * W, h = int(n / per_head % heads);
        const int64_t p = n / per_head / heads;
        bf16* row = packed + (p * heads + h) * hd + i;
        const bf16* src = kSplit ? row : parts.at(p, h) + i;
        bf16* dst = kSplit ? parts.at(p, h) + i : row;
        float a[W], c[W];
        cuda::load_chunk(a, src);
        cuda::load_chunk(c, src + half);
        if (h < turned) {
            float cs[W], sn[W];
            cuda::load_angles(cs, sn, table + 2 * ((p % T) * half + i));
            cuda::turn(a, c, cs, sn);
        }
        cuda::store_chunk(dst, a);
        cuda::store_chunk(dst + half, c);
    }
}

void move_heads(CudaOps& ops, const char* op, Tensor packed, Tensor q, Tensor k, Tensor v, bool split,
                std::optional<double> rope_theta) {
    const QkvDims d = qkv_dims(op, packed, q, k, v);
    cuda::require_dtype(op, "qkv", packed, DType::BF16);
    check(d.hd % 2 == 0, op, "the head size must be even, got " + std::to_string(d.hd));
    if (packed.numel() == 0) return;
    const int64_t T = packed.dim(1);
    const float* table = rope_theta ? ops.rope_table(T, d.hd, *rope_theta) : nullptr;
    const int turned = table ? int(d.nh + d.nkv) : 0;
    const Parts parts{static_cast<bf16*>(q.data), static_cast<bf16*>(k.data), static_cast<bf16*>(v.data), int(d.nh),
                      int(d.nkv), int(d.hd)};
    constexpr int kThreads = 256;
    // Chunks of 8 pairs need hd/2 a multiple of 8 and every tensor on 16 bytes.
    cuda::with_chunk_width(d.hd / 2, {packed.data, q.data, k.data, v.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        const int64_t chunks = d.positions * d.heads() * (d.hd / 2 / W);
        const unsigned blocks = cuda::blocks_for(chunks, kThreads);
        bf16* at = static_cast<bf16*>(packed.data);
        if (split)
            qkv_heads_kernel<W, true><<<blocks, kThreads, 0, ops.stream()>>>(at, parts, table, turned, chunks, T);
        else
            qkv_heads_kernel<W, false><<<blocks, kThreads, 0, ops.stream()>>>(at, parts, nullptr, 0, chunks, T);
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace

void CudaOps::split_qkv(Tensor q, Tensor k, Tensor v, Tensor qkv, std::optional<double> rope_theta) {
    move_heads(*this, "split_qkv", qkv, q, k, v, true, rope_theta);
}

void CudaOps::join_qkv(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv) {
    move_heads(*this, "join_qkv", dqkv, dq, dk, dv, false, std::nullopt);
}

}  // namespace moe
