// Causal GQA attention on the GPU, flash style: tiles of queries x keys on the
// tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), softmax in fp32
// online, never a T x T matrix in memory. Query head h reads kv head
// h / (nh/nkv); scale 1/sqrt(hd); lse is the natural log-sum-exp per query.
//
// Every kernel runs 4 warps; a warp owns 16 rows of its block's tile (queries
// in the forward and dq kernels, keys in the dk/dv kernel) and keeps their
// accumulators in registers. The other operand streams through shared memory
// in tiles, double-buffered with cp.async. Shared rows are padded by 16 bytes
// so that ldmatrix's 8 row reads fall in distinct banks.
//
// Backward, without atomics (every output has one writer, a fixed order):
//   delta = rowsum(dO * O) per query (a small kernel, into scratch);
//   dk/dv kernel: per key tile, every query tile of every query head of its
//     group: P^T = exp(S^T scale - lse), dV += P^T dO, dP^T = V dO^T,
//     dS^T = P^T (dP^T - delta), dK += dS^T Q scale;
//   dq kernel: per query tile, every key tile: dQ += dS K scale.
// P is recomputed in both; that costs one more Q K^T but no atomics.
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/attention_dims.h"
#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 16 * kWarps;  // a block's own rows: 16 per warp
constexpr int kPad = 8;             // bf16 elements (16 bytes) after each shared row
constexpr float kLog2e = 1.4426950408889634f;

// ---- PTX wrappers -----------------------------------------------------------

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

// Four 8x8 bf16 matrices from shared memory; lanes 8i..8i+7 give the row
// addresses of matrix i, and register i receives matrix i (row lane/4,
// columns 2(lane%4), +1); .trans delivers the transposed matrices.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)));
}

// c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col).
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- warp tiles ---------------------------------------------------------------
// A warp's 16 x N fp32 accumulator is float[N/8][4] in the mma C layout: with
// g = lane/4 and c = 2*(lane%4), acc[j][0..1] are row g, columns 8j+c, +1 and
// acc[j][2..3] are row g+8, the same columns.

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // lo in the low half
    return *reinterpret_cast<const uint32_t*>(&v);
}

// Copies rows [0, kRows) of a tile, row r at src + r * stride, into shared
// memory (row stride HD + kPad); rows at or past `valid` are zero-filled and
// never read from global memory. Queued with cp.async: the caller commits.
template <int HD, int kRows>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t stride, int valid) {
    constexpr int kChunks = HD / 8;  // 16-byte pieces per row
    for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
        const int r = c / kChunks, col = (c % kChunks) * 8;
        bf16* d = dst + r * (HD + kPad) + col;
        if (r < valid)
            cp_async16(d, src + r * stride + col);
        else
            *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0);
    }
}

// n floats src[0, n) into shared memory, zeros at or past `valid`; cp.async.
template <int n> __device__ __forceinline__ void load_row_stats(float* dst, const float* src, int valid) {
    for (int i = threadIdx.x; i < n; i += kThreads) {
        if (i < valid)
            cp_async4(dst + i, src + i);
        else
            dst[i] = 0.f;
    }
}

// acc (16 x N) += A_k B_k^T over the 16 columns k..k+15: af is A's fragment
// there (rows 0-7 | 8-15 at column k, then at column k+8), B is N rows of a
// shared tile `b`, row-major with row stride kStride.
template <int N, int kStride>
__device__ __forceinline__ void mma_abt_k(float (&acc)[N / 8][4], const uint32_t (&af)[4], const bf16* b, int k) {
    static_assert(N % 16 == 0, "whole 16x16 fragments");
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int n = 0; n < N; n += 16) {
        uint32_t bf[4];  // matrices: rows n..n+7 at column k | k+8, then rows n+8..n+15
        ldsm_x4(bf, b + (n + (lane & 7) + (lane >> 4) * 8) * kStride + k + ((lane >> 3) & 1) * 8);
        mma16816(acc[n / 8], af, bf[0], bf[1]);
        mma16816(acc[n / 8 + 1], af, bf[2], bf[3]);
    }
}

// The A operand of a warp's products acc (16 x N) += A B^T: the warp's 16
// rows (K used columns, row stride kStride) of a shared tile that stays for a
// kernel's whole loop. kKeep holds their fragments in registers, loaded once
// (ready()), where each product would otherwise read them from shared memory
// again: shared-memory reads, not the tensor cores, bound these loops.
// Without kKeep (where registers are short) they are read at each product.
template <int K, int kStride, bool kKeep> class WarpRowsA {
public:
    static_assert(K % 16 == 0, "whole 16x16 fragments");
    __device__ __forceinline__ explicit WarpRowsA(const bf16* rows) : rows_(rows) {}
    // Once the tile is in shared memory (after the barrier that follows its copy).
    __device__ __forceinline__ void ready() {
        if constexpr (kKeep)
#pragma unroll
            for (int k = 0; k < K; k += 16) load(f_[k / 16], k);
    }
    template <int N> __device__ __forceinline__ void mma_abt(float (&acc)[N / 8][4], const bf16* b) const {
#pragma unroll
        for (int k = 0; k < K; k += 16) {
            if constexpr (kKeep) {
                mma_abt_k<N, kStride>(acc, f_[k / 16], b, k);
            } else {
                uint32_t af[4];
                load(af, k);
                mma_abt_k<N, kStride>(acc, af, b, k);
            }
        }
    }

private:
    __device__ __forceinline__ void load(uint32_t (&af)[4], int k) const {
        const int lane = threadIdx.x & 31;
        ldsm_x4(af, rows_ + (lane & 15) * kStride + k + (lane >> 4) * 8);
    }
    const bf16* rows_;
    uint32_t f_[kKeep ? K / 16 : 1][4];
};

// acc (16 x N) += P B: P is a 16 x K accumulator (C layout, fp32, rounded to
// bf16 here: a C tile pair is exactly an A fragment), B is K rows of a shared
// tile `b`, row-major with N used columns and row stride kStride.
template <int N, int K, int kStride>
__device__ __forceinline__ void mma_pb(float (&acc)[N / 8][4], const float (&p)[K / 8][4], const bf16* b) {
    static_assert(N % 16 == 0 && K % 16 == 0, "whole 16x16 fragments");
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int k = 0; k < K; k += 16) {
        const uint32_t af[4] = {pack_bf16(p[k / 8][0], p[k / 8][1]), pack_bf16(p[k / 8][2], p[k / 8][3]),
                                pack_bf16(p[k / 8 + 1][0], p[k / 8 + 1][1]),
                                pack_bf16(p[k / 8 + 1][2], p[k / 8 + 1][3])};
#pragma unroll
        for (int n = 0; n < N; n += 16) {
            uint32_t bf[4];  // transposed matrices: rows k..k+7 | k+8..k+15 at column n, then at n+8
            ldsm_x4_trans(bf, b + (k + (lane & 15)) * kStride + n + (lane >> 4) * 8);
            mma16816(acc[n / 8], af, bf[0], bf[1]);
            mma16816(acc[n / 8 + 1], af, bf[2], bf[3]);
        }
    }
}

// Reductions over the 4 lanes that share an accumulator row.
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// dst[0..1] = round(dst[0..1] + alpha * (x0, x1)) when accumulate, else
// round(alpha * (x0, x1)): one writer per element.
__device__ __forceinline__ void put_pair(bf16* dst, float x0, float x1, float alpha, bool accumulate) {
    __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(dst);
    const float2 old = accumulate ? __bfloat1622float2(*p) : make_float2(0.f, 0.f);
    *p = __floats2bfloat162_rn(old.x + alpha * x0, old.y + alpha * x1);
}

// Shapes shared by the kernels. Rows of q/out/dout are (b, t, h) with stride
// nh*hd; rows of k/v are (b, t, kv head) with stride nkv*hd; lse and delta
// are [B, nh, T].
struct Shape {
    int T, nh, nkv;
    float scale, scale_log2;  // 1/sqrt(hd), and that times log2(e) for exp2
};

// Tiles for a head size in the backward: the dk/dv kernel's query tile and
// the dq kernel's key tile are 64 rows, or 32 for hd 128 to bound registers
// and shared memory.
template <int HD> constexpr int kBwdRows = HD <= 64 ? 64 : 32;
// The backward kernels read their fixed operands' fragments at each product
// (WarpRowsA without kKeep): keeping them costs occupancy (ptxas, sm_90, hd
// 64: dk/dv 167 -> 229 registers, 3 -> 2 blocks a SM; dq spills), a trade to
// measure on a GPU first.
constexpr bool kBwdKeepRows = false;

// ---- kernels ------------------------------------------------------------------

// Grid (B*nh, query tiles), the tiles with the most keys first.
template <int HD> __global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, Shape s) {
    constexpr int kS = HD + kPad;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* sq = reinterpret_cast<bf16*>(smem);  // [kTile][kS]
    bf16* sk = sq + kTile * kS;                // [2][kTile][kS]
    bf16* sv = sk + 2 * kTile * kS;            // [2][kTile][kS]

    const int qt = int(gridDim.y) - 1 - int(blockIdx.y), q0 = qt * kTile;
    const int b = int(blockIdx.x) / s.nh, h = int(blockIdx.x) % s.nh, kvh = h / (s.nh / s.nkv);
    const int64_t q_stride = int64_t(s.nh) * HD, kv_stride = int64_t(s.nkv) * HD;
    const int64_t q_row0 = (int64_t(b) * s.T + q0) * s.nh + h;   // row of (b, q0, h)
    const bf16* kg = k + (int64_t(b) * s.T * s.nkv + kvh) * HD;  // (b, 0, kvh)
    const bf16* vg = v + (int64_t(b) * s.T * s.nkv + kvh) * HD;

    load_tile<HD, kTile>(sq, q + q_row0 * HD, q_stride, s.T - q0);
    load_tile<HD, kTile>(sk, kg, kv_stride, s.T);
    load_tile<HD, kTile>(sv, vg, kv_stride, s.T);
    cp_async_commit();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row_lo = q0 + warp * 16 + (lane >> 2), row_hi = row_lo + 8;  // query of acc[.][0..1], [.][2..3]
    WarpRowsA<HD, kS, true> qa(sq + warp * 16 * kS);
    float o[HD / 8][4] = {};
    float m_lo = -INFINITY, m_hi = -INFINITY;  // running max of the raw scores
    float l_lo = 0.f, l_hi = 0.f;              // this lane's share of the running sum of exp

    // Key tiles 0..qt: the diagonal tile qt is the last a query of this tile sees.
    for (int j = 0; j <= qt; ++j) {
        const int buf = j & 1;
        if (j < qt) {  // prefetch tile j+1 into the buffer tile j-1 used
            const int64_t next = int64_t(j + 1) * kTile;
            load_tile<HD, kTile>(sk + (buf ^ 1) * kTile * kS, kg + next * kv_stride, kv_stride, s.T - int(next));
            load_tile<HD, kTile>(sv + (buf ^ 1) * kTile * kS, vg + next * kv_stride, kv_stride, s.T - int(next));
        }
        cp_async_commit();
        cp_async_wait<1>();  // everything but the prefetch has landed
        __syncthreads();
        if (j == 0) qa.ready();

        float p[kTile / 8][4] = {};
        qa.template mma_abt<kTile>(p, sk + buf * kTile * kS);
        if (j == qt) {  // causal mask; it also hides the keys past T
            const int k0 = j * kTile + 2 * (lane & 3);
#pragma unroll
            for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (k0 + 8 * n + (e & 1) > (e < 2 ? row_lo : row_hi)) p[n][e] = -INFINITY;
        }
        float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n) {
            mx_lo = fmaxf(mx_lo, fmaxf(p[n][0], p[n][1]));
            mx_hi = fmaxf(mx_hi, fmaxf(p[n][2], p[n][3]));
        }
        mx_lo = quad_max(mx_lo);
        mx_hi = quad_max(mx_hi);
        // exp2 offsets; a row whose keys so far are all masked keeps offset 0
        // (never -inf - -inf).
        const float off_lo = mx_lo == -INFINITY ? 0.f : mx_lo * s.scale_log2;
        const float off_hi = mx_hi == -INFINITY ? 0.f : mx_hi * s.scale_log2;
        const float alpha_lo = exp2f(m_lo * s.scale_log2 - off_lo), alpha_hi = exp2f(m_hi * s.scale_log2 - off_hi);
        m_lo = mx_lo;
        m_hi = mx_hi;
        l_lo *= alpha_lo;
        l_hi *= alpha_hi;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= alpha_lo;
            o[n][1] *= alpha_lo;
            o[n][2] *= alpha_hi;
            o[n][3] *= alpha_hi;
        }
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n) {
            p[n][0] = exp2f(p[n][0] * s.scale_log2 - off_lo);
            p[n][1] = exp2f(p[n][1] * s.scale_log2 - off_lo);
            p[n][2] = exp2f(p[n][2] * s.scale_log2 - off_hi);
            p[n][3] = exp2f(p[n][3] * s.scale_log2 - off_hi);
            l_lo += p[n][0] + p[n][1];
            l_hi += p[n][2] + p[n][3];
        }
        mma_pb<HD, kTile, kS>(o, p, sv + buf * kTile * kS);
        __syncthreads();  // all warps are done with buffer buf before it is refilled
    }

    l_lo = quad_sum(l_lo);
    l_hi = quad_sum(l_hi);
    const float inv_lo = 1.f / l_lo, inv_hi = 1.f / l_hi;
    const int col = 2 * (lane & 3);
    bf16* out_lo = out + (q_row0 + int64_t(warp * 16 + (lane >> 2)) * s.nh) * HD + col;
    bf16* out_hi = out_lo + 8 * q_stride;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        if (row_lo < s.T)
            *reinterpret_cast<__nv_bfloat162*>(out_lo + 8 * n) =
                __floats2bfloat162_rn(o[n][0] * inv_lo, o[n][1] * inv_lo);
        if (row_hi < s.T)
            *reinterpret_cast<__nv_bfloat162*>(out_hi + 8 * n) =
                __floats2bfloat162_rn(o[n][2] * inv_hi, o[n][3] * inv_hi);
    }
    if ((lane & 3) == 0) {
        float* lse_bh = lse + (int64_t(b) * s.nh + h) * s.T;
        if (row_lo < s.T) lse_bh[row_lo] = m_lo * s.scale + logf(l_lo);
        if (row_hi < s.T) lse_bh[row_hi] = m_hi * s.scale + logf(l_hi);
    }
}

// delta[b, h, t] = sum_d dout * out over the row (b, t, h): one warp per row.
__global__ void attention_delta_kernel(float* delta, const bf16* dout, const bf16* out, int64_t rows, int T, int nh,
                                       int hd) {
    const int warps = blockDim.x / 32, lane = threadIdx.x & 31;
    for (int64_t r = int64_t(blockIdx.x) * warps + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * warps) {
        float acc = 0.f;
        for (int d = lane; d < hd; d += 32) acc += cuda::load(dout, r * hd + d) * cuda::load(out, r * hd + d);
        acc = cuda::warp_sum(acc);
        const int64_t h = r % nh, bt = r / nh;  // r = (b*T + t)*nh + h
        if (lane == 0) delta[(bt / T * nh + h) * T + bt % T] = acc;
    }
}

// dk and dv of one key tile of one kv head: grid (B*nkv, key tiles), the
// first key tiles (seen by the most queries) first. Either output may be null;
// both are added to when accumulate, else written.
template <int HD> __global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(bf16* dk, bf16* dv, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,
                          const float* lse, const float* delta, Shape s, bool accumulate) {
    constexpr int kS = HD + kPad, kQ = kBwdRows<HD>;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* sk = reinterpret_cast<bf16*>(smem);                   // [kTile][kS]
    bf16* sv = sk + kTile * kS;                                 // [kTile][kS]
    bf16* sq = sv + kTile * kS;                                 // [2][kQ][kS]
    bf16* sdo = sq + 2 * kQ * kS;                               // [2][kQ][kS]
    float* slse = reinterpret_cast<float*>(sdo + 2 * kQ * kS);  // [2][kQ]
    float* sdelta = slse + 2 * kQ;                              // [2][kQ]

    const int k0 = int(blockIdx.y) * kTile;
    const int b = int(blockIdx.x) / s.nkv, kvh = int(blockIdx.x) % s.nkv, group = s.nh / s.nkv;
    const int64_t q_stride = int64_t(s.nh) * HD, kv_stride = int64_t(s.nkv) * HD;
    const int64_t kv_row0 = (int64_t(b) * s.T + k0) * s.nkv + kvh;  // row of (b, k0, kvh)
    load_tile<HD, kTile>(sk, k + kv_row0 * HD, kv_stride, s.T - k0);
    load_tile<HD, kTile>(sv, v + kv_row0 * HD, kv_stride, s.T - k0);

    // Steps: for each query head of the group, the query tiles from the one
    // holding key k0 to the last.
    const int qt_first = k0 / kQ, per_head = (s.T + kQ - 1) / kQ - qt_first, steps = group * per_head;
    auto load_step = [&](int step, int buf) {
        const int h = kvh * group + step / per_head, q0 = (qt_first + step % per_head) * kQ;
        const int64_t row0 = (int64_t(b) * s.T + q0) * s.nh + h, stat0 = (int64_t(b) * s.nh + h) * s.T + q0;
        load_tile<HD, kQ>(sq + buf * kQ * kS, q + row0 * HD, q_stride, s.T - q0);
        load_tile<HD, kQ>(sdo + buf * kQ * kS, dout + row0 * HD, q_stride, s.T - q0);
        load_row_stats<kQ>(slse + buf * kQ, lse + stat0, s.T - q0);
        load_row_stats<kQ>(sdelta + buf * kQ, delta + stat0, s.T - q0);
    };
    load_step(0, 0);
    cp_async_commit();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int key_lo = k0 + warp * 16 + (lane >> 2), key_hi = key_lo + 8;  // key of acc[.][0..1], [.][2..3]
    WarpRowsA<HD, kS, kBwdKeepRows> ka(sk + warp * 16 * kS), va(sv + warp * 16 * kS);
    float dk_acc[HD / 8][4] = {}, dv_acc[HD / 8][4] = {};

    for (int step = 0; step < steps; ++step) {
        const int buf = step & 1;
        if (step + 1 < steps) load_step(step + 1, buf ^ 1);  // into the buffers step-1 used
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (step == 0) {
            ka.ready();
            va.ready();
        }

        const bf16 *sqb = sq + buf * kQ * kS, *sdob = sdo + buf * kQ * kS;
        const float *slb = slse + buf * kQ, *sdb = sdelta + buf * kQ;
        const int q0 = (qt_first + step % per_head) * kQ;
        // P^T = exp(K Q^T scale - lse) where query >= key and query < T.
        float p[kQ / 8][4] = {};
        ka.template mma_abt<kQ>(p, sqb);
#pragma unroll
        for (int n = 0; n < kQ / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = 8 * n + 2 * (lane & 3) + (e & 1), query = q0 + c;
                p[n][e] = query >= (e < 2 ? key_lo : key_hi) && query < s.T
                              ? exp2f(p[n][e] * s.scale_log2 - slb[c] * kLog2e)
                              : 0.f;
            }
        float dp[kQ / 8][4] = {};
        va.template mma_abt<kQ>(dp, sdob);                    // dP^T = V dO^T
        if (dv) mma_pb<HD, kQ, kS>(dv_acc, p, sdob);         // dV += P^T dO
        if (dk) {
#pragma unroll
            for (int n = 0; n < kQ / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) dp[n][e] = p[n][e] * (dp[n][e] - sdb[8 * n + 2 * (lane & 3) + (e & 1)]);
            mma_pb<HD, kQ, kS>(dk_acc, dp, sqb);  // dK += dS^T Q (scaled at the end)
        }
        __syncthreads();  // all warps are done with buffer buf before it is refilled
    }

    const int col = 2 * (lane & 3);
    const int64_t lo = (kv_row0 + int64_t(warp * 16 + (lane >> 2)) * s.nkv) * HD + col, hi = lo + 8 * kv_stride;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        if (dk && key_lo < s.T) put_pair(dk + lo + 8 * n, dk_acc[n][0], dk_acc[n][1], s.scale, accumulate);
        if (dk && key_hi < s.T) put_pair(dk + hi + 8 * n, dk_acc[n][2], dk_acc[n][3], s.scale, accumulate);
        if (dv && key_lo < s.T) put_pair(dv + lo + 8 * n, dv_acc[n][0], dv_acc[n][1], 1.f, accumulate);
        if (dv && key_hi < s.T) put_pair(dv + hi + 8 * n, dv_acc[n][2], dv_acc[n][3], 1.f, accumulate);
    }
}

// dq of one query tile of one head: grid (B*nh, query tiles), the tiles with
// the most keys first; added to when accumulate, else written.
template <int HD> __global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(bf16* dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                        const float* delta, Shape s, bool accumulate) {
    constexpr int kS = HD + kPad, kK = kBwdRows<HD>;
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* sq = reinterpret_cast<bf16*>(smem);  // [kTile][kS]
    bf16* sdo = sq + kTile * kS;               // [kTile][kS]
    bf16* sk = sdo + kTile * kS;               // [2][kK][kS]
    bf16* sv = sk + 2 * kK * kS;               // [2][kK][kS]

    const int q0 = (int(gridDim.y) - 1 - int(blockIdx.y)) * kTile;
    const int b = int(blockIdx.x) / s.nh, h = int(blockIdx.x) % s.nh, kvh = h / (s.nh / s.nkv);
    const int64_t q_stride = int64_t(s.nh) * HD, kv_stride = int64_t(s.nkv) * HD;
    const int64_t q_row0 = (int64_t(b) * s.T + q0) * s.nh + h;
    const bf16* kg = k + (int64_t(b) * s.T * s.nkv + kvh) * HD;
    const bf16* vg = v + (int64_t(b) * s.T * s.nkv + kvh) * HD;

    load_tile<HD, kTile>(sq, q + q_row0 * HD, q_stride, s.T - q0);
    load_tile<HD, kTile>(sdo, dout + q_row0 * HD, q_stride, s.T - q0);
    load_tile<HD, kK>(sk, kg, kv_stride, s.T);
    load_tile<HD, kK>(sv, vg, kv_stride, s.T);
    cp_async_commit();

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row_lo = q0 + warp * 16 + (lane >> 2), row_hi = row_lo + 8;
    WarpRowsA<HD, kS, kBwdKeepRows> qa(sq + warp * 16 * kS), doa(sdo + warp * 16 * kS);
    const float* lse_bh = lse + (int64_t(b) * s.nh + h) * s.T;
    const float* delta_bh = delta + (int64_t(b) * s.nh + h) * s.T;
    // Rows past T are never stored; any finite statistics do for them.
    const float lse_lo = row_lo < s.T ? lse_bh[row_lo] * kLog2e : 0.f,
                lse_hi = row_hi < s.T ? lse_bh[row_hi] * kLog2e : 0.f;
    const float delta_lo = row_lo < s.T ? delta_bh[row_lo] : 0.f, delta_hi = row_hi < s.T ? delta_bh[row_hi] : 0.f;
    float dq_acc[HD / 8][4] = {};

    // Key tiles up to the one holding the tile's last query (or T-1).
    const int last = (min(q0 + kTile, s.T) - 1) / kK;
    for (int j = 0; j <= last; ++j) {
        const int buf = j & 1;
        if (j < last) {
            const int64_t next = int64_t(j + 1) * kK;
            load_tile<HD, kK>(sk + (buf ^ 1) * kK * kS, kg + next * kv_stride, kv_stride, s.T - int(next));
            load_tile<HD, kK>(sv + (buf ^ 1) * kK * kS, vg + next * kv_stride, kv_stride, s.T - int(next));
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (j == 0) {
            qa.ready();
            doa.ready();
        }

        const bf16 *skb = sk + buf * kK * kS, *svb = sv + buf * kK * kS;
        float p[kK / 8][4] = {};
        qa.template mma_abt<kK>(p, skb);
        const int k0 = j * kK + 2 * (lane & 3);
#pragma unroll
        for (int n = 0; n < kK / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool lo = e < 2;
                p[n][e] = k0 + 8 * n + (e & 1) <= (lo ? row_lo : row_hi)
                              ? exp2f(p[n][e] * s.scale_log2 - (lo ? lse_lo : lse_hi))
                              : 0.f;
            }
        float dp[kK / 8][4] = {};
        doa.template mma_abt<kK>(dp, svb);  // dP = dO V^T
#pragma unroll
        for (int n = 0; n < kK / 8; ++n) {
            dp[n][0] = p[n][0] * (dp[n][0] - delta_lo);
            dp[n][1] = p[n][1] * (dp[n][1] - delta_lo);
            dp[n][2] = p[n][2] * (dp[n][2] - delta_hi);
            dp[n][3] = p[n][3] * (dp[n][3] - delta_hi);
        }
        mma_pb<HD, kK, kS>(dq_acc, dp, skb);  // dQ += dS K (scaled at the end)
        __syncthreads();
    }

    const int col = 2 * (lane & 3);
    const int64_t lo = (q_row0 + int64_t(warp * 16 + (lane >> 2)) * s.nh) * HD + col, hi = lo + 8 * q_stride;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        if (row_lo < s.T) put_pair(dq + lo + 8 * n, dq_acc[n][0], dq_acc[n][1], s.scale, accumulate);
        if (row_hi < s.T) put_pair(dq + hi + 8 * n, dq_acc[n][2], dq_acc[n][3], s.scale, accumulate);
    }
}

// ---- host side ------------------------------------------------------------------

AttentionDims dims_of(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                      const Tensor& lse) {
    const AttentionDims d = attention_dims(op, q, k, v, out, lse);
    const std::string shapes = attention_shapes(q, k, v, out, lse);
    check(gpu_attention_head_size(d.hd), op,
          "the CUDA backend supports head sizes 16, 32, 64 and 128, got hd " + std::to_string(d.hd) + " (" + shapes +
              ")");
    // Grid y counts 64-row tiles; grid x counts (batch, head) pairs.
    check(d.T <= int64_t(65535) * kTile && d.B * d.nh <= INT_MAX, op, "sequence or batch too long: " + shapes);
    cuda::require_dtype(op, "q", q, DType::BF16);
    cuda::require_dtype(op, "k", k, DType::BF16);
    cuda::require_dtype(op, "v", v, DType::BF16);
    cuda::require_dtype(op, "out", out, DType::BF16);
    cuda::require_dtype(op, "lse", lse, DType::F32);
    return d;
}

// Inputs move in 16-byte cp.async pieces, outputs in bf16 pairs.
void require_aligned(const char* op, const char* name, const Tensor& t, unsigned bytes) {
    check(reinterpret_cast<uintptr_t>(t.data) % bytes == 0, op,
          std::string(name) + " is not " + std::to_string(bytes) + "-byte aligned");
}

// Calls f(std::integral_constant<int, hd>) for a supported head size.
template <class F> void with_head_dim(int64_t hd, F&& f) {
    switch (hd) {
        case 16:
            return f(std::integral_constant<int, 16>{});
        case 32:
            return f(std::integral_constant<int, 32>{});
        case 64:
            return f(std::integral_constant<int, 64>{});
        default:
            return f(std::integral_constant<int, 128>{});  // dims_of admitted only these
    }
}

// Lets `kernel` use `bytes` of dynamic shared memory (past the 48 KB default).
template <class Kernel> void allow_shared(Kernel kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        MOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

Shape shape_of(const AttentionDims& d) {
    const float scale = float(1.0 / std::sqrt(double(d.hd)));
    return {int(d.T), int(d.nh), int(d.nkv), scale, scale * kLog2e};
}

int tiles(int64_t T) { return int((T + kTile - 1) / kTile); }

}  // namespace

void CudaOps::attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
    const char* op = "attention_forward";
    const AttentionDims d = dims_of(op, q, k, v, out, lse);
    require_aligned(op, "q", q, 16);
    require_aligned(op, "k", k, 16);
    require_aligned(op, "v", v, 16);
    require_aligned(op, "out", out, 4);
    if (d.B * d.T * d.nh == 0) return;
    const Shape s = shape_of(d);
    with_head_dim(d.hd, [&](auto hd_tag) {
        constexpr int HD = decltype(hd_tag)::value;
        const size_t bytes = size_t(5) * kTile * (HD + kPad) * sizeof(bf16);  // q, 2 x (k, v)
        allow_shared(attention_forward_kernel<HD>, bytes);
        attention_forward_kernel<HD><<<dim3(unsigned(d.B * d.nh), unsigned(tiles(d.T))), kThreads, bytes, stream()>>>(
            static_cast<bf16*>(out.data), static_cast<float*>(lse.data), static_cast<const bf16*>(q.data),
            static_cast<const bf16*>(k.data), static_cast<const bf16*>(v.data), s);
        MOE_CUDA_LAUNCHED();
    });
}

void CudaOps::attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                                 Tensor lse, Write write) {
    const char* op = "attention_backward";
    const AttentionDims d = dims_of(op, q, k, v, out, lse);
    check(dout.numel() == q.numel() && (dq.empty() || dq.numel() == q.numel()) &&
              (dk.empty() || dk.numel() == k.numel()) && (dv.empty() || dv.numel() == v.numel()),
          op,
          "dout " + dout.shape_str() + ", dq " + dq.shape_str() + ", dk " + dk.shape_str() + ", dv " + dv.shape_str() +
              " do not match q " + q.shape_str() + " and k, v " + k.shape_str());
    cuda::require_dtype(op, "dout", dout, DType::BF16);
    cuda::require_dtype(op, "dq", dq, DType::BF16);
    cuda::require_dtype(op, "dk", dk, DType::BF16);
    cuda::require_dtype(op, "dv", dv, DType::BF16);
    require_aligned(op, "q", q, 16);
    require_aligned(op, "k", k, 16);
    require_aligned(op, "v", v, 16);
    require_aligned(op, "dout", dout, 16);
    require_aligned(op, "dq", dq, 4);
    require_aligned(op, "dk", dk, 4);
    require_aligned(op, "dv", dv, 4);
    if ((dq.empty() && dk.empty() && dv.empty()) || d.B * d.T * d.nh == 0) return;
    const Shape s = shape_of(d);
    const auto* pq = static_cast<const bf16*>(q.data);
    const auto* pk = static_cast<const bf16*>(k.data);
    const auto* pv = static_cast<const bf16*>(v.data);
    const auto* pdo = static_cast<const bf16*>(dout.data);
    const auto* plse = static_cast<const float*>(lse.data);

    const int64_t rows = d.B * d.T * d.nh;
    auto* delta = static_cast<float*>(scratch(size_t(rows) * sizeof(float)));
    constexpr int kDeltaThreads = 256;
    attention_delta_kernel<<<cuda::blocks_for(rows, kDeltaThreads / 32), kDeltaThreads, 0, stream()>>>(
        delta, pdo, static_cast<const bf16*>(out.data), rows, s.T, s.nh, int(d.hd));
    MOE_CUDA_LAUNCHED();

    with_head_dim(d.hd, [&](auto hd_tag) {
        constexpr int HD = decltype(hd_tag)::value;
        constexpr int kRows = kBwdRows<HD>;
        if (!dk.empty() || !dv.empty()) {
            // k, v; 2 x (q, dout); 2 x (lse, delta)
            const size_t bytes =
                (size_t(2) * kTile + 4 * kRows) * (HD + kPad) * sizeof(bf16) + 4 * kRows * sizeof(float);
            allow_shared(attention_dkdv_kernel<HD>, bytes);
            attention_dkdv_kernel<HD><<<dim3(unsigned(d.B * d.nkv), unsigned(tiles(d.T))), kThreads, bytes, stream()>>>(
                static_cast<bf16*>(dk.data), static_cast<bf16*>(dv.data), pq, pk, pv, pdo, plse, delta, s,
                write == Write::add);
            MOE_CUDA_LAUNCHED();
        }
        if (!dq.empty()) {
            const size_t bytes = (size_t(2) * kTile + 4 * kRows) * (HD + kPad) * sizeof(bf16);  // q, dout; 2 x (k, v)
            allow_shared(attention_dq_kernel<HD>, bytes);
            attention_dq_kernel<HD><<<dim3(unsigned(d.B * d.nh), unsigned(tiles(d.T))), kThreads, bytes, stream()>>>(
                static_cast<bf16*>(dq.data), pq, pk, pv, pdo, plse, delta, s, write == Write::add);
            MOE_CUDA_LAUNCHED();
        }
    });
}

}  // namespace moe
