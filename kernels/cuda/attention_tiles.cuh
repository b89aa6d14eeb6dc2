// What the attention kernels' two tile-math families share (attention.cu):
// block size, asynchronous copies into shared memory, and the fp32 -> bf16
// packing of an accumulator into an A fragment.
//
// A warpgroup, 4 warps, owns a 64-row tile; warp w of it owns rows
// 16w..16w+15. A block is one warpgroup, or (the forward and dq kernels)
// one for each query head of a kv group it takes, all reading one K and V
// tile. A warp's 16 x N fp32 accumulator is float[N/8][4] in
// the mma C layout: with g = lane/4 and c = 2*(lane%4), acc[j][0..1] are row
// g, columns 8j+c, +1 and acc[j][2..3] are row g+8, the same columns. Both
// families (WarpMma, WarpgroupMma) keep this layout, so the kernels' softmax
// and masking read the same registers whichever multiplies.
#pragma once
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fast_math.cuh"

namespace moe::attention {

using cuda::bf16;
using cuda::exp2_ftz;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;  // a warpgroup
constexpr int kTile = 16 * kWarps;     // a warpgroup's own rows: 16 per warp

// This thread's warp within its warpgroup, and its warpgroup in a block of
// kGroups of them.
__device__ __forceinline__ int warp_of_group() { return int((threadIdx.x >> 5) & (kWarps - 1)); }
template <int kGroups> __device__ __forceinline__ int warpgroup() {
    return kGroups == 1 ? 0 : int(threadIdx.x / kThreads);
}

__device__ __forceinline__ uint32_t shared_address(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared, asynchronously (completes at cp_async_wait).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(dst)),
                 "l"(__cvta_generic_to_global(src)));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(dst)),
                 "l"(__cvta_generic_to_global(src)));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `pending` of this thread's committed groups are in flight.
template <int pending> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// Copies rows [0, kRows) of HD columns, row r at src + r * stride, into the
// shared tile `dst`, element (r, c) at Layout::template offset<HD, kRows>(r, c)
// (16-byte pieces stay whole in every layout); rows at or past `valid` are
// zero-filled and never read from global memory. Queued with cp.async by
// the whole block of kBlock threads: the caller commits.
template <class Layout, int HD, int kRows, int kBlock = kThreads>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t stride, int valid) {
    constexpr int kChunks = HD / 8;  // 16-byte pieces per row
    for (int c = threadIdx.x; c < kRows * kChunks; c += kBlock) {
        const int r = c / kChunks, col = (c % kChunks) * 8;
        bf16* d = dst + Layout::template offset<HD, kRows>(r, col);
        if (r < valid)
            cp_async16(d, src + r * stride + col);
        else
            *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0);
    }
}

// n floats src[0, n) into shared memory, zeros at or past `valid`; cp.async
// by a block of one warpgroup.
template <int n> __device__ __forceinline__ void load_row_stats(float* dst, const float* src, int valid) {
    for (int i = threadIdx.x; i < n; i += kThreads) {
        if (i < valid)
            cp_async4(dst + i, src + i);
        else
            dst[i] = 0.f;
    }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // lo in the low half
    return *reinterpret_cast<const uint32_t*>(&v);
}

// Columns k..k+15 of a 16 x K accumulator rounded to bf16: exactly the A
// fragment of those columns (a C tile pair is an A fragment).
template <int K>
__device__ __forceinline__ void a_fragment(uint32_t (&af)[4], const float (&p)[K / 8][4], int k) {
    af[0] = pack_bf16(p[k / 8][0], p[k / 8][1]);
    af[1] = pack_bf16(p[k / 8][2], p[k / 8][3]);
    af[2] = pack_bf16(p[k / 8 + 1][0], p[k / 8 + 1][1]);
    af[3] = pack_bf16(p[k / 8 + 1][2], p[k / 8 + 1][3]);
}
// All of a 16 x K accumulator as A fragments: pf[i] holds columns 16i..16i+15.
template <int K> __device__ __forceinline__ void a_fragments(uint32_t (&pf)[K / 16][4], const float (&p)[K / 8][4]) {
#pragma unroll
    for (int k = 0; k < K; k += 16) a_fragment<K>(pf[k / 16], p, k);
}

}  // namespace moe::attention
