// The attention kernels' portable tile math (any GPU from sm_80): each warp
// multiplies its own 16 rows with mma.sync m16n8k16 (bf16 in, fp32
// accumulate), loading fragments from shared memory with ldmatrix. Shared
// rows are padded by 16 bytes so that ldmatrix's 8 row reads fall in
// distinct banks.
#pragma once
#include <cstdint>

#include "kernels/cuda/attention_tiles.cuh"

namespace moe::attention {

struct WarpMma {
    static constexpr int kPad = 8;  // bf16 elements (16 bytes) after each shared row
    static constexpr int kAlign = 16;

    // The softmax's 2^x: exp2f. (exp2_ftz, which the wgmma family takes,
    // costs this family's kernels occupancy: ptxas gives dK/dV at hd 64 171
    // registers, 2 blocks an SM where 3, and spills in dQ at hd 16.)
    __device__ __forceinline__ static float exp2(float x) { return exp2f(x); }

    // bf16 elements a tile of kRows rows of HD columns takes, and where its
    // element (r, c) is: rows one after another, padded.
    template <int HD, int kRows> static constexpr int tile_elements() { return kRows * (HD + kPad); }
    template <int HD, int kRows> __device__ __forceinline__ static constexpr int offset(int r, int c) {
        return r * (HD + kPad) + c;
    }

    // Tiles copied with cp.async are read by ldmatrix after the block's
    // barrier: nothing more to order.
    __device__ __forceinline__ static void shared_writes_visible() {}

    // Four 8x8 bf16 matrices from shared memory; lanes 8i..8i+7 give the row
    // addresses of matrix i, and register i receives matrix i (row lane/4,
    // columns 2(lane%4), +1); .trans delivers the transposed matrices.
    __device__ __forceinline__ static void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(shared_address(p)));
    }
    __device__ __forceinline__ static void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(shared_address(p)));
    }

    // c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col).
    __device__ __forceinline__ static void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }

    // acc (16 x N) += A_k B_k^T over the 16 columns k..k+15: af is A's
    // fragment there, B is the N-row shared tile `b` of HD columns.
    template <int HD, int N>
    __device__ __forceinline__ static void mma_abt_k(float (&acc)[N / 8][4], const uint32_t (&af)[4], const bf16* b,
                                                     int k) {
        static_assert(N % 16 == 0, "whole 16x16 fragments");
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int n = 0; n < N; n += 16) {
            uint32_t bf[4];  // matrices: rows n..n+7 at column k | k+8, then rows n+8..n+15
            ldsm_x4(bf, b + offset<HD, N>(n + (lane & 7) + (lane >> 4) * 8, k + ((lane >> 3) & 1) * 8));
            mma16816(acc[n / 8], af, bf[0], bf[1]);
            mma16816(acc[n / 8 + 1], af, bf[2], bf[3]);
        }
    }
    // acc (16 x HD) += P_k B_k over rows k..k+15 of B: af is P's fragment there.
    template <int HD, int K>
    __device__ __forceinline__ static void mma_pb_k(float (&acc)[HD / 8][4], const uint32_t (&af)[4], const bf16* b,
                                                    int k) {
        static_assert(HD % 16 == 0, "whole 16x16 fragments");
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int n = 0; n < HD; n += 16) {
            uint32_t bf[4];  // transposed matrices: rows k..k+7 | k+8..k+15 at column n, then at n+8
            ldsm_x4_trans(bf, b + offset<HD, K>(k + (lane & 15), n + (lane >> 4) * 8));
            mma16816(acc[n / 8], af, bf[0], bf[1]);
            mma16816(acc[n / 8 + 1], af, bf[2], bf[3]);
        }
    }

    // The A operand of a warp's products acc (16 x N) += A B^T: the warp's
    // 16 rows of its warpgroup's 64-row shared tile of HD columns, fixed for a
    // kernel's whole loop. kKeep holds their fragments in registers, loaded
    // once (ready()), where each product would otherwise read them from
    // shared memory again: shared-memory reads, not the tensor cores, bound
    // these loops. Without kKeep (where registers are short) they are read at
    // each product.
    template <int HD, bool kKeep> class RowsA {
    public:
        static_assert(HD % 16 == 0, "whole 16x16 fragments");
        __device__ __forceinline__ explicit RowsA(const bf16* tile)
            : rows_(tile + offset<HD, kTile>(16 * warp_of_group(), 0)) {}
        // Once the tile is in shared memory (after the barrier that follows its copy).
        __device__ __forceinline__ void ready() {
            if constexpr (kKeep)
#pragma unroll
                for (int k = 0; k < HD; k += 16) load(f_[k / 16], k);
        }
        // acc (16 x N) += A B^T, B the N-row shared tile `b`.
        template <int N> __device__ __forceinline__ void abt(float (&acc)[N / 8][4], const bf16* b) const {
#pragma unroll
            for (int k = 0; k < HD; k += 16) {
                if constexpr (kKeep) {
                    mma_abt_k<HD, N>(acc, f_[k / 16], b, k);
                } else {
                    uint32_t af[4];
                    load(af, k);
                    mma_abt_k<HD, N>(acc, af, b, k);
                }
            }
        }

        // The same product in two halves, as WarpgroupMma overlaps it with
        // the work between: here start() notes B and finish() multiplies
        // (the warp's registers hold the product either way; kPending, the
        // products WarpgroupMma leaves running, means nothing here).
        template <int N> __device__ __forceinline__ void start(float (&)[N / 8][4], const bf16* b) { pending_ = b; }
        template <int N, int kPending = 0> __device__ __forceinline__ void finish(float (&acc)[N / 8][4]) const {
            abt<N>(acc, pending_);
        }

    private:
        __device__ __forceinline__ void load(uint32_t (&af)[4], int k) const {
            const int lane = threadIdx.x & 31;
            ldsm_x4(af, rows_ + offset<HD, kTile>(lane & 15, k + (lane >> 4) * 8));
        }
        const bf16* rows_;  // the warp's first row
        const bf16* pending_ = nullptr;
        uint32_t f_[kKeep ? HD / 16 : 1][4];
    };

    // acc (16 x HD) += P B: P is the warp's 16 x K accumulator (rounded to
    // bf16 here), B the K-row shared tile `b` of HD columns.
    template <int HD, int K>
    __device__ __forceinline__ static void pb(float (&acc)[HD / 8][4], const float (&p)[K / 8][4], const bf16* b) {
        static_assert(K % 16 == 0, "whole 16x16 fragments");
#pragma unroll
        for (int k = 0; k < K; k += 16) {
            uint32_t af[4];
            a_fragment<K>(af, p, k);
            mma_pb_k<HD, K>(acc, af, b, k);
        }
    }
    // The same product from P's A fragments (a_fragments), in the two halves
    // WarpgroupMma overlaps with the work between: here finish_pb multiplies
    // and start_pb does nothing (the warp's own registers take the product
    // either way; taking it after the work between leaves that work more).
    template <int HD, int K>
    __device__ __forceinline__ static void start_pb(float (&)[HD / 8][4], uint32_t (&)[K / 16][4], const bf16*) {}
    template <int HD, int K>
    __device__ __forceinline__ static void finish_pb(float (&acc)[HD / 8][4], uint32_t (&pf)[K / 16][4],
                                                     const bf16* b) {
#pragma unroll
        for (int k = 0; k < K; k += 16) mma_pb_k<HD, K>(acc, pf[k / 16], b, k);
    }
};

}  // namespace moe::attention
