// The attention kernels' Hopper tile math (sm_90a): a warpgroup
// multiplies all 64 rows at once with wgmma (wgmma.cuh), reading B, and A
// where it sits in shared memory, straight from the 128-byte-swizzled
// tiles, where WarpMma loads every fragment through ldmatrix first. Head
// sizes 64 and 128 (tiles of whole 128-byte rows).
#pragma once
#include <cstdint>

#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/swizzle128.h"
#include "kernels/cuda/wgmma.cuh"

namespace moe::attention {

struct WarpgroupMma {
    static constexpr int kAlign = 1024;  // an 8-row group of the swizzle

    // The softmax's 2^x: exp2_ftz (fast_math.cuh), three instructions fewer
    // than exp2f's: 102 a key tile for each thread of the forward, whose
    // exponentials at head size 64 already ask the special-function unit as
    // many cycles as the products ask the tensor cores. The softmax's
    // exponentials are at most 1, and one below 2^-126 changes no fp32 sum
    // that holds the row's largest, 1.
    __device__ __forceinline__ static float exp2(float x) { return exp2_ftz(x); }

    template <int HD> static constexpr bool supports() { return HD == 64 || HD == 128; }

    // bf16 elements a tile of kRows rows of HD columns takes, and where its
    // element (r, c) is (swizzle128.h).
    template <int HD, int kRows> static constexpr int tile_elements() { return kRows * HD; }
    template <int HD, int kRows> __device__ __forceinline__ static constexpr int offset(int r, int c) {
        return swizzle128::offset<kRows>(r, c);
    }

    // Orders this thread's cp.async writes before wgmma's reads (then the
    // block's barrier orders every thread's).
    __device__ __forceinline__ static void shared_writes_visible() { cuda::wgmma::shared_writes_visible(); }

    // The descriptor of the 16 columns k..k+15 (k-major) of a kRows-row tile.
    template <int kRows> __device__ __forceinline__ static uint64_t k_major(const bf16* tile, int k) {
        return cuda::wgmma::descriptor(shared_address(tile) + swizzle128::k_major_start<kRows>(k), 16,
                                       swizzle128::kGroupBytes);
    }
    // The descriptor of rows k..k+15 of a K-row tile as an MN-major operand.
    template <int K> __device__ __forceinline__ static uint64_t mn_major(const bf16* tile, int k) {
        return cuda::wgmma::descriptor(shared_address(tile) + swizzle128::mn_major_start(k),
                                       swizzle128::mn_block_bytes<K>(), swizzle128::kGroupBytes);
    }

    // The A operand of products acc (64 x N) += A B^T: the warpgroup's 64-row
    // tile of HD columns, read by wgmma from shared memory, as
    // FlashAttention-3 reads Q (kKeep has no meaning here). Holding the
    // fragments in registers instead (wgmma's register A) would halve the
    // shared-memory bytes of these products, but takes the forward from 114
    // to 156 registers (ptxas, hd 64): 3 blocks a SM instead of 4, fewer to
    // overlap one block's softmax with another's products. To measure.
    template <int HD, bool kKeep> class RowsA {
    public:
        static_assert(supports<HD>(), "tiles of whole 128-byte rows");
        __device__ __forceinline__ explicit RowsA(const bf16* tile) : tile_(tile) {}
        __device__ __forceinline__ void ready() {}
        // acc (64 x N) += A B^T, B the N-row shared tile `b`.
        template <int N> __device__ __forceinline__ void abt(float (&acc)[N / 8][4], const bf16* b) const {
            start<N>(acc, b);
            finish<N>(acc);
        }
        // The same product in two halves: start() queues it on the tensor
        // cores and returns, finish() waits for it, leaving the kPending
        // products queued after it running. The work between (on other
        // registers than acc) overlaps the product.
        template <int N> __device__ __forceinline__ void start(float (&acc)[N / 8][4], const bf16* b) const {
            namespace wg = cuda::wgmma;
            wg::pin(acc);
            wg::fence();
#pragma unroll
            for (int k = 0; k < HD; k += 16) wg::mma_ss<N>(acc, k_major<kTile>(tile_, k), k_major<N>(b, k));
            wg::commit();
        }
        template <int N, int kPending = 0> __device__ __forceinline__ void finish(float (&acc)[N / 8][4]) const {
            cuda::wgmma::wait<kPending>();
            cuda::wgmma::pin(acc);
        }

    private:
        const bf16* tile_;
    };

    // acc (64 x HD) += P B: P the warpgroup's 64 x K accumulator (rounded to
    // bf16 here, each warp its 16 rows), B the K-row shared tile `b`.
    template <int HD, int K>
    __device__ __forceinline__ static void pb(float (&acc)[HD / 8][4], const float (&p)[K / 8][4], const bf16* b) {
        uint32_t pf[K / 16][4];
        a_fragments<K>(pf, p);
        start_pb<HD, K>(acc, pf, b);
        finish_pb<HD, K>(acc, pf, b);
    }
    // The same product from P's A fragments (a_fragments) in two halves, both
    // given the same operands: start_pb queues it after any product already
    // queued, finish_pb waits for all of them. Until then neither acc nor pf
    // may change: the tensor cores read pf and write acc while the warps work
    // on.
    template <int HD, int K>
    __device__ __forceinline__ static void start_pb(float (&acc)[HD / 8][4], uint32_t (&pf)[K / 16][4],
                                                    const bf16* b) {
        static_assert(supports<HD>() && K % 16 == 0, "whole 128-byte rows, whole k steps");
        namespace wg = cuda::wgmma;
        wg::pin(pf);
        wg::pin(acc);
        wg::fence();
#pragma unroll
        for (int k = 0; k < K; k += 16) wg::mma_rs<HD>(acc, pf[k / 16], mn_major<K>(b, k));
        wg::commit();
    }
    template <int HD, int K>
    __device__ __forceinline__ static void finish_pb(float (&acc)[HD / 8][4], uint32_t (&pf)[K / 16][4],
                                                     const bf16*) {
        cuda::wgmma::wait<0>();
        cuda::wgmma::pin(acc);
        cuda::wgmma::pin(pf);  // its registers stay pf's until the products have read them
    }
};

}  // namespace moe::attention
