// Causal GQA attention on the GPU, flash style: tiles of queries x keys on the
// tensor cores (bf16 in, fp32 accumulate), softmax in fp32 online, never a
// T x T matrix in memory. Query head h reads kv head h / (nh/nkv); scale
// 1/sqrt(hd); lse is the natural log-sum-exp per query.
//
// Every warpgroup (4 warps) works on a 64-row tile of its own (queries in
// the forward and dq kernels, keys in the dk/dv kernel); warp w keeps rows
// 16w..16w+15's accumulators in registers. The other operand streams
// through shared memory in tiles, double-buffered with cp.async. A dk/dv
// block is one warpgroup; a forward or dq block is one for each of kHeads
// query heads of one kv group (GQA), for the same query tile, so the K and V
// tiles they all read are copied once (max_heads: up to 4 where registers
// allow, on wgmma).
// The products come from one of two tile-math families with the same
// accumulator layout (attention_tiles.cuh): WarpgroupMma (wgmma, Hopper,
// head sizes 64 and 128) where the GPU and the build allow it, else WarpMma
// (mma.sync, any GPU from sm_80). Both give a step the same bits on every
// run; they differ from each other in fp32 summation order only.
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
#include "kernels/cuda/attention_warp_mma.cuh"
#include "kernels/cuda/attention_warpgroup_mma.cuh"
#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using namespace attention;

constexpr float kLog2e = 1.4426950408889634f;

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

// With a RoPE table (rope.cu's (cos, sin) of position p and pair i at
// [2 (p * HD/2 + i)]; null: none), turns each accumulator row's pairs
// (i, i + HD/2) back by its position's angles: the gradient of a q or k
// before the rotation, ahead of the one rounding in put_pair. A thread holds
// both halves of its pairs (columns 8n + c and 8n + c + HD/2 are fragments n
// and n + HD/16), rows lo and hi at [.][0..1] and [.][2..3].
template <int HD> __device__ __forceinline__ void rotate_back(float (&acc)[HD / 8][4], const float* table, int lo,
                                                              int hi, int T) {
    if (!table) return;
    const int col = 2 * (threadIdx.x & 3);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? lo : hi;
        if (row >= T) continue;
#pragma unroll
        for (int n = 0; n < HD / 16; ++n) {
            const float4 cs = *reinterpret_cast<const float4*>(table + 2 * (int64_t(row) * (HD / 2) + 8 * n + col));
            float &a0 = acc[n][2 * r], &b0 = acc[n + HD / 16][2 * r];
            float &a1 = acc[n][2 * r + 1], &b1 = acc[n + HD / 16][2 * r + 1];
            const float x0 = a0, y0 = b0, x1 = a1, y1 = b1;
            a0 = x0 * cs.x + y0 * cs.y;
            b0 = y0 * cs.x - x0 * cs.y;
            a1 = x1 * cs.z + y1 * cs.w;
            b1 = y1 * cs.z - x1 * cs.w;
        }
    }
}

// Shapes shared by the kernels. Head h of position (b, t) is row
// (b T + t) row + h from its tensor's base, a row being hd elements, where
// `row` is the heads a position's row holds there: nh for out and dout,
// q_row for q, kv_row for k and v, dq_row for dq, dkv_row for dk and dv (more
// than nh or nkv where they lie in the stacked projection's rows, whose base
// pointers the host moves to their first head). lse and delta are [B, nh, T].
struct Shape {
    int T, nh, nkv;
    int q_row, kv_row, dq_row, dkv_row;
    float scale, scale_log2;  // 1/sqrt(hd), and that times log2(e) for exp2
};

// Tiles for a head size in the backward: the dk/dv kernel's query tile and
// the dq kernel's key tile are 64 rows, or 32 for hd 128 to bound registers
// and shared memory.
template <int HD> constexpr int kBwdRows = HD <= 64 ? 64 : 32;
// K and V buffers of the dq kernel: three where a block takes several query
// heads (one barrier a tile), two for one (where a third tile of each would
// cost hd 64 its fourth block an SM: 64 KB of shared memory a block).
constexpr int dq_kv_stages(int heads) { return heads > 1 ? 3 : 2; }
// WarpMma's backward kernels read their fixed operands' fragments at each
// product (RowsA without kKeep): keeping them costs occupancy (ptxas, sm_90,
// hd 64: dk/dv 167 -> 229 registers, 3 -> 2 blocks a SM; dq spills), a
// trade to measure on a GPU first.
constexpr bool kBwdKeepRows = false;

// The query heads of a forward or dq block: kHeads consecutive ones of one
// kv group, warpgroup wg taking head h0 + wg, for sequence b.
template <int kHeads> struct BlockHeads {
    int b, h0, wg, h, kvh;
    __device__ __forceinline__ explicit BlockHeads(const Shape& s) {
        const int blocks_a_row = s.nh / kHeads;
        b = int(blockIdx.x) / blocks_a_row;
        h0 = int(blockIdx.x) % blocks_a_row * kHeads;
        wg = warpgroup<kHeads>();
        h = h0 + wg;
        kvh = h0 / (s.nh / s.nkv);
    }
};

// The kernel's dynamic shared memory, aligned as Mma's tiles need; the
// launch asks for Mma::kAlign - 16 bytes more than the tiles take.
template <class Mma> __device__ __forceinline__ unsigned char* shared_tiles() {
    extern __shared__ __align__(16) unsigned char smem[];
    if constexpr (Mma::kAlign <= 16)
        return smem;
    else
        return smem + ((Mma::kAlign - shared_address(smem) % Mma::kAlign) % Mma::kAlign);
}
template <class Mma> constexpr size_t alignment_slack() { return Mma::kAlign > 16 ? Mma::kAlign - 16 : 0; }

// Waits for the copies this thread queued (all but the kPending latest
// groups), makes them visible to the tile math's reads (wgmma's too) and
// meets the block. After it every thread's copies have landed, and every
// warp is done with the tiles it read before (each tile's products are
// waited for within it), so the forward and dK/dV kernels queue the next
// tile's copies into those buffers right after (their first tile's wait
// leaving the second's copies in flight): one barrier a tile. The dQ kernel
// queues them before, into a third buffer.
template <class Mma, int kPending = 0> __device__ __forceinline__ void copies_landed() {
    cp_async_wait<kPending>();
    Mma::shared_writes_visible();
    __syncthreads();
}

// ---- kernels ------------------------------------------------------------------

// Grid (B*nh/kHeads, query tiles), the tiles with the most keys first. A
// block takes kHeads consecutive query heads of one kv group, a warpgroup
// each, for one query tile: they read each K and V tile once.
//
// Software-pipelined as FlashAttention-3 overlaps softmax with the products
// within a warpgroup: at key tile j the tensor cores get S_j = Q K_j^T and
// then O += P_{j-1} V_{j-1}, and the warps wait for S_j alone and run its
// softmax while the second product runs (WarpgroupMma; WarpMma multiplies
// where it is asked to). O sees the operations of the plain loop in the same
// order (O = alpha_j (O + P_{j-1} V_{j-1}), the last P V after the loop), so
// the bits are the plain loop's. V tile j is read one tile after K tile j:
// the copies at tile j bring K tile j+1 and V tile j, queued once tile j's
// have landed (copies_landed: one barrier a tile).
template <class Mma, int HD, int kHeads> __global__ void __launch_bounds__(kThreads * kHeads)
    attention_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, Shape s) {
    constexpr int kT = Mma::template tile_elements<HD, kTile>();
    bf16* sq = reinterpret_cast<bf16*>(shared_tiles<Mma>());  // [kHeads][kT]
    bf16* sk = sq + kHeads * kT;                               // [2][kT]
    bf16* sv = sk + 2 * kT;                                    // [2][kT]

    const int qt = int(gridDim.y) - 1 - int(blockIdx.y), q0 = qt * kTile;
    const BlockHeads<kHeads> heads(s);
    const int b = heads.b, h = heads.h, kvh = heads.kvh, wg = heads.wg;
    const int64_t q_stride = int64_t(s.q_row) * HD, kv_stride = int64_t(s.kv_row) * HD;
    const int64_t q_row0 = (int64_t(b) * s.T + q0) * s.q_row + h;   // row of (b, q0, h)
    const bf16* kg = k + (int64_t(b) * s.T * s.kv_row + kvh) * HD;  // (b, 0, kvh)
    const bf16* vg = v + (int64_t(b) * s.T * s.kv_row + kvh) * HD;

    constexpr int kBlock = kThreads * kHeads;
    for (int i = 0; i < kHeads; ++i)  // head h0 + i
        load_tile<Mma, HD, kTile, kBlock>(sq + i * kT, q + (q_row0 - wg + i) * HD, q_stride, s.T - q0);
    load_tile<Mma, HD, kTile, kBlock>(sk, kg, kv_stride, s.T);
    cp_async_commit();

    const int warp = warp_of_group(), lane = threadIdx.x & 31;
    const int row_lo = q0 + warp * 16 + (lane >> 2), row_hi = row_lo + 8;  // query of acc[.][0..1], [.][2..3]
    typename Mma::template RowsA<HD, true> qa(sq + wg * kT);
    float o[HD / 8][4] = {};
    uint32_t pf[kTile / 16][4];                // P of the key tile before, as A fragments
    float m_lo = -INFINITY, m_hi = -INFINITY;  // running max of the raw scores
    float l_lo = 0.f, l_hi = 0.f;              // this lane's share of the running sum of exp

    // At key tile j (0..qt; the diagonal tile qt is the last a query of this
    // tile sees), once K tile j and V tile j-1 have landed: K tile j+1 into
    // the buffer S_{j-1} read, V tile j into the one P_{j-2} V_{j-2} read
    // (both read at tile j-1, which every warp has left at that landing).
    // Tile 0's are queued with Q's, into buffers nothing has read.
    const auto copy_tiles = [&](int j) {
        const int buf = j & 1;
        if (j < qt)
            load_tile<Mma, HD, kTile, kBlock>(sk + (buf ^ 1) * kT, kg + int64_t(j + 1) * kTile * kv_stride,
                                              kv_stride, s.T - (j + 1) * kTile);
        load_tile<Mma, HD, kTile, kBlock>(sv + buf * kT, vg + int64_t(j) * kTile * kv_stride, kv_stride,
                                          s.T - j * kTile);
        cp_async_commit();
    };
    // S_j = Q K_j^T in p -> P_j (exp2 offsets the new running max) in p; the
    // running max and sum move on. Returns the factors that take O from the
    // old max to the new one (rows lo, hi).
    const auto softmax = [&](float (&p)[kTile / 8][4], int j) {
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
        const float alpha_lo = Mma::exp2(m_lo * s.scale_log2 - off_lo);
        const float alpha_hi = Mma::exp2(m_hi * s.scale_log2 - off_hi);
        m_lo = mx_lo;
        m_hi = mx_hi;
        l_lo *= alpha_lo;
        l_hi *= alpha_hi;
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n) {
            p[n][0] = Mma::exp2(p[n][0] * s.scale_log2 - off_lo);
            p[n][1] = Mma::exp2(p[n][1] * s.scale_log2 - off_lo);
            p[n][2] = Mma::exp2(p[n][2] * s.scale_log2 - off_hi);
            p[n][3] = Mma::exp2(p[n][3] * s.scale_log2 - off_hi);
            l_lo += p[n][0] + p[n][1];
            l_hi += p[n][2] + p[n][3];
        }
        return make_float2(alpha_lo, alpha_hi);
    };

    copy_tiles(0);            // into buffers nothing has read yet
    copies_landed<Mma, 1>();  // Q and K tile 0
    qa.ready();
    {
        float p[kTile / 8][4] = {};
        qa.template abt<kTile>(p, sk);
        softmax(p, 0);  // O is still 0: no rescale
        a_fragments<kTile>(pf, p);
    }
    for (int j = 1; j <= qt; ++j) {
        const int buf = j & 1;
        copies_landed<Mma>();  // K tile j, V tile j-1
        copy_tiles(j);
        float p[kTile / 8][4] = {};
        qa.template start<kTile>(p, sk + buf * kT);
        const bf16* v_before = sv + (buf ^ 1) * kT;
        Mma::template start_pb<HD, kTile>(o, pf, v_before);
        qa.template finish<kTile, 1>(p);  // S_j, while P_{j-1} V_{j-1} may still run
        const float2 alpha = softmax(p, j);
        Mma::template finish_pb<HD, kTile>(o, pf, v_before);
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
            o[n][0] *= alpha.x;
            o[n][1] *= alpha.x;
            o[n][2] *= alpha.y;
            o[n][3] *= alpha.y;
        }
        a_fragments<kTile>(pf, p);
    }
    copies_landed<Mma>();  // V tile qt
    const bf16* v_last = sv + (qt & 1) * kT;
    Mma::template start_pb<HD, kTile>(o, pf, v_last);
    Mma::template finish_pb<HD, kTile>(o, pf, v_last);

    l_lo = quad_sum(l_lo);
    l_hi = quad_sum(l_hi);
    const float inv_lo = 1.f / l_lo, inv_hi = 1.f / l_hi;
    const int col = 2 * (lane & 3);
    const int64_t out_row0 = (int64_t(b) * s.T + q0) * s.nh + h;
    bf16* out_lo = out + (out_row0 + int64_t(warp * 16 + (lane >> 2)) * s.nh) * HD + col;
    bf16* out_hi = out_lo + 8 * int64_t(s.nh) * HD;
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

// delta[b, h, t] = sum_d dout * out over the row (b, t, h): a row's HD/8
// lanes each take a 16-byte chunk of both (every head size is a multiple of
// 8 and the rows 16-byte aligned), then add across the group in a fixed tree.
template <int HD>
__global__ void attention_delta_kernel(float* delta, const bf16* dout, const bf16* out, int64_t rows, int T, int nh) {
    constexpr int kLanes = HD / 8, kRowsAWarp = 32 / kLanes;
    const int lane = threadIdx.x & 31, chunk = lane % kLanes;
    const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
    for (int64_t r0 = (int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32) * kRowsAWarp; r0 < rows;
         r0 += warps * kRowsAWarp) {
        const int64_t r = r0 + lane / kLanes;
        float acc = 0.f;
        if (r < rows) {
            float g[8], o[8];
            cuda::load_chunk<8>(g, dout + r * HD + 8 * chunk);
            cuda::load_chunk<8>(o, out + r * HD + 8 * chunk);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc += g[e] * o[e];
        }
#pragma unroll
        for (int offset = kLanes / 2; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
        const int64_t h = r % nh, bt = r / nh;  // r = (b*T + t)*nh + h
        if (chunk == 0 && r < rows) delta[(bt / T * nh + h) * T + bt % T] = acc;
    }
}

// dk and dv of one key tile of one kv head: grid (B*nkv, key tiles), the
// first key tiles (seen by the most queries) first. Either output may be null;
// both are added to when accumulate, else written; dk turned back by rope
// (rotate_back).
template <class Mma, int HD> __global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(bf16* dk, bf16* dv, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,
                          const float* lse, const float* delta, const float* rope, Shape s, bool accumulate) {
    constexpr int kQ = kBwdRows<HD>;
    constexpr int kT = Mma::template tile_elements<HD, kTile>(), kQT = Mma::template tile_elements<HD, kQ>();
    bf16* sk = reinterpret_cast<bf16*>(shared_tiles<Mma>());  // [kT]
    bf16* sv = sk + kT;                                        // [kT]
    bf16* sq = sv + kT;                                        // [2][kQT]
    bf16* sdo = sq + 2 * kQT;                                  // [2][kQT]
    float* slse = reinterpret_cast<float*>(sdo + 2 * kQT);     // [2][kQ]
    float* sdelta = slse + 2 * kQ;                              // [2][kQ]

    const int k0 = int(blockIdx.y) * kTile;
    const int b = int(blockIdx.x) / s.nkv, kvh = int(blockIdx.x) % s.nkv, group = s.nh / s.nkv;
    const int64_t q_stride = int64_t(s.q_row) * HD, do_stride = int64_t(s.nh) * HD;
    const int64_t kv_stride = int64_t(s.kv_row) * HD;
    const int64_t kv_row0 = (int64_t(b) * s.T + k0) * s.kv_row + kvh;  // row of (b, k0, kvh)
    load_tile<Mma, HD, kTile>(sk, k + kv_row0 * HD, kv_stride, s.T - k0);
    load_tile<Mma, HD, kTile>(sv, v + kv_row0 * HD, kv_stride, s.T - k0);

    // Steps: for each query head of the group, the query tiles from the one
    // holding key k0 to the last.
    const int qt_first = k0 / kQ, per_head = (s.T + kQ - 1) / kQ - qt_first, steps = group * per_head;
    auto load_step = [&](int step, int buf) {
        const int h = kvh * group + step / per_head, q0 = (qt_first + step % per_head) * kQ;
        const int64_t position0 = int64_t(b) * s.T + q0, stat0 = (int64_t(b) * s.nh + h) * s.T + q0;
        load_tile<Mma, HD, kQ>(sq + buf * kQT, q + (position0 * s.q_row + h) * HD, q_stride, s.T - q0);
        load_tile<Mma, HD, kQ>(sdo + buf * kQT, dout + (position0 * s.nh + h) * HD, do_stride, s.T - q0);
        load_row_stats<kQ>(slse + buf * kQ, lse + stat0, s.T - q0);
        load_row_stats<kQ>(sdelta + buf * kQ, delta + stat0, s.T - q0);
    };
    load_step(0, 0);
    cp_async_commit();
    if (steps > 1) load_step(1, 1);
    cp_async_commit();
    copies_landed<Mma, 1>();  // K, V and the first step's

    const int warp = warp_of_group(), lane = threadIdx.x & 31;
    const int key_lo = k0 + warp * 16 + (lane >> 2), key_hi = key_lo + 8;  // key of acc[.][0..1], [.][2..3]
    typename Mma::template RowsA<HD, kBwdKeepRows> ka(sk), va(sv);
    float dk_acc[HD / 8][4] = {}, dv_acc[HD / 8][4] = {};

    ka.ready();
    va.ready();
    for (int step = 0; step < steps; ++step) {
        const int buf = step & 1;
        if (step > 0) {
            copies_landed<Mma>();  // the step's tiles and row statistics
            if (step + 1 < steps) {
                load_step(step + 1, buf ^ 1);  // into the buffers step-1 read
                cp_async_commit();
            }
        }

        const bf16 *sqb = sq + buf * kQT, *sdob = sdo + buf * kQT;
        const float *slb = slse + buf * kQ, *sdb = sdelta + buf * kQ;
        const int q0 = (qt_first + step % per_head) * kQ;
        // P^T = exp(K Q^T scale - lse) where query >= key and query < T,
        // while the tensor cores work on dP^T = V dO^T (WarpgroupMma: both
        // products queued together, the warps waiting for the first).
        float p[kQ / 8][4] = {}, dp[kQ / 8][4] = {};
        ka.template start<kQ>(p, sqb);
        va.template start<kQ>(dp, sdob);
        ka.template finish<kQ, 1>(p);
#pragma unroll
        for (int n = 0; n < kQ / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = 8 * n + 2 * (lane & 3) + (e & 1), query = q0 + c;
                p[n][e] = query >= (e < 2 ? key_lo : key_hi) && query < s.T
                              ? Mma::exp2(p[n][e] * s.scale_log2 - slb[c] * kLog2e)
                              : 0.f;
            }
        va.template finish<kQ>(dp);
        if (dv) Mma::template pb<HD, kQ>(dv_acc, p, sdob);  // dV += P^T dO
        if (dk) {
#pragma unroll
            for (int n = 0; n < kQ / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) dp[n][e] = p[n][e] * (dp[n][e] - sdb[8 * n + 2 * (lane & 3) + (e & 1)]);
            Mma::template pb<HD, kQ>(dk_acc, dp, sqb);  // dK += dS^T Q (scaled at the end)
        }
    }

    if (dk) rotate_back<HD>(dk_acc, rope, key_lo, key_hi, s.T);
    const int col = 2 * (lane & 3);
    const int64_t dkv_row0 = (int64_t(b) * s.T + k0) * s.dkv_row + kvh;
    const int64_t lo = (dkv_row0 + int64_t(warp * 16 + (lane >> 2)) * s.dkv_row) * HD + col,
                  hi = lo + 8 * int64_t(s.dkv_row) * HD;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        if (dk && key_lo < s.T) put_pair(dk + lo + 8 * n, dk_acc[n][0], dk_acc[n][1], s.scale, accumulate);
        if (dk && key_hi < s.T) put_pair(dk + hi + 8 * n, dk_acc[n][2], dk_acc[n][3], s.scale, accumulate);
        if (dv && key_lo < s.T) put_pair(dv + lo + 8 * n, dv_acc[n][0], dv_acc[n][1], 1.f, accumulate);
        if (dv && key_hi < s.T) put_pair(dv + hi + 8 * n, dv_acc[n][2], dv_acc[n][3], 1.f, accumulate);
    }
}

// dq of one query tile of kHeads query heads of one kv group (a warpgroup
// each, as the forward): grid (B*nh/kHeads, query tiles), the tiles with the
// most keys first; added to when accumulate, else written; turned back by
// rope (rotate_back).
template <class Mma, int HD, int kHeads> __global__ void __launch_bounds__(kThreads * kHeads)
    attention_dq_kernel(bf16* dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                        const float* delta, const float* rope, Shape s, bool accumulate) {
    constexpr int kK = kBwdRows<HD>;
    constexpr int kT = Mma::template tile_elements<HD, kTile>(), kKT = Mma::template tile_elements<HD, kK>();
    bf16* sq = reinterpret_cast<bf16*>(shared_tiles<Mma>());  // [kHeads][kT]
    bf16* sdo = sq + kHeads * kT;                              // [kHeads][kT]
    constexpr int kStages = dq_kv_stages(kHeads);
    bf16* sk = sdo + kHeads * kT;                              // [kStages][kKT]
    bf16* sv = sk + kStages * kKT;                             // [kStages][kKT]

    const int q0 = (int(gridDim.y) - 1 - int(blockIdx.y)) * kTile;
    const BlockHeads<kHeads> heads(s);
    const int b = heads.b, h = heads.h, kvh = heads.kvh, wg = heads.wg;
    const int64_t q_stride = int64_t(s.q_row) * HD, do_stride = int64_t(s.nh) * HD;
    const int64_t kv_stride = int64_t(s.kv_row) * HD;
    const int64_t position0 = int64_t(b) * s.T + q0;
    const bf16* kg = k + (int64_t(b) * s.T * s.kv_row + kvh) * HD;
    const bf16* vg = v + (int64_t(b) * s.T * s.kv_row + kvh) * HD;

    constexpr int kBlock = kThreads * kHeads;
    for (int i = 0; i < kHeads; ++i) {
        const int head = h - wg + i;  // h0 + i
        load_tile<Mma, HD, kTile, kBlock>(sq + i * kT, q + (position0 * s.q_row + head) * HD, q_stride, s.T - q0);
        load_tile<Mma, HD, kTile, kBlock>(sdo + i * kT, dout + (position0 * s.nh + head) * HD, do_stride, s.T - q0);
    }
    load_tile<Mma, HD, kK, kBlock>(sk, kg, kv_stride, s.T);
    load_tile<Mma, HD, kK, kBlock>(sv, vg, kv_stride, s.T);
    cp_async_commit();

    const int warp = warp_of_group(), lane = threadIdx.x & 31;
    const int row_lo = q0 + warp * 16 + (lane >> 2), row_hi = row_lo + 8;
    typename Mma::template RowsA<HD, kBwdKeepRows> qa(sq + wg * kT), doa(sdo + wg * kT);
    const float* lse_bh = lse + (int64_t(b) * s.nh + h) * s.T;
    const float* delta_bh = delta + (int64_t(b) * s.nh + h) * s.T;
    // Rows past T are never stored; any finite statistics do for them.
    const float lse_lo = row_lo < s.T ? lse_bh[row_lo] * kLog2e : 0.f,
                lse_hi = row_hi < s.T ? lse_bh[row_hi] * kLog2e : 0.f;
    const float delta_lo = row_lo < s.T ? delta_bh[row_lo] : 0.f, delta_hi = row_hi < s.T ? delta_bh[row_hi] : 0.f;
    float dq_acc[HD / 8][4] = {};

    // Key tiles up to the one holding the tile's last query (or T-1).
    const int last = (min(q0 + kTile, s.T) - 1) / kK;
    // Tile j+1's copies are queued before tile j's land, into the buffers of
    // tile j+1-kStages. With three, every warp has left that tile at tile
    // j-1's landing: one barrier a tile. With two (a block of one head, where
    // a third would cost hd 64 a block an SM), a second barrier ends each tile.
    // (Queued after the landing, into the buffers tile j-1 read, as the other
    // two kernels do, ptxas gives the two-head block 134 registers, not 128:
    // one block an SM where two.)
    for (int j = 0; j <= last; ++j) {
        const int buf = j % kStages;
        if (j < last) {
            const int64_t next = int64_t(j + 1) * kK;
            const int valid = s.T - int(next), into = (j + 1) % kStages * kKT;
            load_tile<Mma, HD, kK, kBlock>(sk + into, kg + next * kv_stride, kv_stride, valid);
            load_tile<Mma, HD, kK, kBlock>(sv + into, vg + next * kv_stride, kv_stride, valid);
        }
        cp_async_commit();
        copies_landed<Mma, 1>();  // K and V tile j
        if (j == 0) {
            qa.ready();
            doa.ready();
        }

        const bf16 *skb = sk + buf * kKT, *svb = sv + buf * kKT;
        // P = exp(Q K^T scale - lse) where key <= query, while the tensor
        // cores work on dP = dO V^T (WarpgroupMma: both products queued
        // together, the warps waiting for the first).
        float p[kK / 8][4] = {}, dp[kK / 8][4] = {};
        qa.template start<kK>(p, skb);
        doa.template start<kK>(dp, svb);
        qa.template finish<kK, 1>(p);
        const int k0 = j * kK + 2 * (lane & 3);
#pragma unroll
        for (int n = 0; n < kK / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool lo = e < 2;
                p[n][e] = k0 + 8 * n + (e & 1) <= (lo ? row_lo : row_hi)
                              ? Mma::exp2(p[n][e] * s.scale_log2 - (lo ? lse_lo : lse_hi))
                              : 0.f;
            }
        doa.template finish<kK>(dp);
#pragma unroll  // dS = P (dP - delta)
        for (int n = 0; n < kK / 8; ++n) {
            dp[n][0] = p[n][0] * (dp[n][0] - delta_lo);
            dp[n][1] = p[n][1] * (dp[n][1] - delta_lo);
            dp[n][2] = p[n][2] * (dp[n][2] - delta_hi);
            dp[n][3] = p[n][3] * (dp[n][3] - delta_hi);
        }
        Mma::template pb<HD, kK>(dq_acc, dp, skb);  // dQ += dS K (scaled at the end)
        if constexpr (kStages == 2) __syncthreads();  // every warp is done with buffer buf before it is refilled
    }

    rotate_back<HD>(dq_acc, rope, row_lo, row_hi, s.T);
    const int col = 2 * (lane & 3);
    const int64_t lo = ((position0 + warp * 16 + (lane >> 2)) * s.dq_row + h) * HD + col,
                  hi = lo + 8 * int64_t(s.dq_row) * HD;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
        if (row_lo < s.T) put_pair(dq + lo + 8 * n, dq_acc[n][0], dq_acc[n][1], s.scale, accumulate);
        if (row_hi < s.T) put_pair(dq + hi + 8 * n, dq_acc[n][2], dq_acc[n][3], s.scale, accumulate);
    }
}

// ---- host side ------------------------------------------------------------------

AttentionDims dims_of(const char* op, const Heads& q, const Heads& k, const Heads& v, const Tensor& out,
                      const Tensor& lse) {
    const AttentionDims d = attention_dims(op, q, k, v, out, lse);
    const std::string shapes = attention_shapes(q, k, v, out, lse);
    check(gpu_attention_head_size(d.hd), op,
          "the CUDA backend supports head sizes 16, 32, 64 and 128, got hd " + std::to_string(d.hd) + " (" + shapes +
              ")");
    // Grid y counts 64-row tiles; grid x counts (batch, head) pairs.
    check(d.T <= int64_t(65535) * kTile && d.B * d.nh <= INT_MAX, op, "sequence or batch too long: " + shapes);
    cuda::require_dtype(op, "q", q.t, DType::BF16);
    cuda::require_dtype(op, "k", k.t, DType::BF16);
    cuda::require_dtype(op, "v", v.t, DType::BF16);
    cuda::require_dtype(op, "out", out, DType::BF16);
    cuda::require_dtype(op, "lse", lse, DType::F32);
    return d;
}

// Inputs move in 16-byte cp.async pieces, outputs in bf16 pairs (a view's
// rows are whole heads apart, hd a multiple of 8: its first head's alignment
// is every head's).
void require_aligned(const char* op, const char* name, const void* p, unsigned bytes) {
    check(reinterpret_cast<uintptr_t>(p) % bytes == 0, op,
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

// Calls f(Mma{}, std::integral_constant<int, hd>) with the tile math that
// runs head size hd: WarpgroupMma where `wgmma` and it takes hd, else WarpMma.
template <class F> void with_kernels(bool wgmma, int64_t hd, F&& f) {
    with_head_dim(hd, [&](auto hd_tag) {
        if constexpr (WarpgroupMma::supports<decltype(hd_tag)::value>()) {
            if (wgmma) return f(WarpgroupMma{}, hd_tag);
        }
        f(WarpMma{}, hd_tag);
    });
}

// The most query heads a forward or dq block of Mma's kernels at head size
// HD takes where registers allow (a block of 4 warpgroups leaves 128 a
// thread). ptxas, sm_90a: wgmma hd 64 with 4 heads, forward 115 registers and
// dq 128, no spills; hd 128 with 4 would spill (forward 156 bytes), with 2
// not. mma.sync keeps one head a block, as before (hd 64 with 2 spills).
template <class Mma, int HD> constexpr int max_heads() {
    if constexpr (std::is_same_v<Mma, WarpgroupMma>) return HD <= 64 ? 4 : 2;
    return 1;
}

// Calls f(std::integral_constant<int, heads>) with the query heads a forward
// or dq block takes: the most, up to `most` and kMost, that divides the kv
// group.
template <int kMost, class F> void with_heads(int most, int64_t group, F&& f) {
    if constexpr (kMost >= 4)
        if (most >= 4 && group % 4 == 0) return f(std::integral_constant<int, 4>{});
    if constexpr (kMost >= 2)
        if (most >= 2 && group % 2 == 0) return f(std::integral_constant<int, 2>{});
    f(std::integral_constant<int, 1>{});
}

// Lets `kernel` use `bytes` of dynamic shared memory (past the 48 KB default).
template <class Kernel> void allow_shared(Kernel kernel, size_t bytes) {
    if (bytes > 48 * 1024)
        MOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

Shape shape_of(const AttentionDims& d, const AttentionGradRows& g = {}) {
    const float scale = float(1.0 / std::sqrt(double(d.hd)));
    return {int(d.T), int(d.nh), int(d.nkv), int(d.q_row), int(d.kv_row), int(g.dq), int(g.dkv), scale, scale * kLog2e};
}

int tiles(int64_t T) { return int((T + kTile - 1) / kTile); }

}  // namespace

void CudaOps::attention_forward(Tensor out, Tensor lse, Heads q, Heads k, Heads v) {
    const char* op = "attention_forward";
    const AttentionDims d = dims_of(op, q, k, v, out, lse);
    require_aligned(op, "q", q.base(), 16);
    require_aligned(op, "k", k.base(), 16);
    require_aligned(op, "v", v.base(), 16);
    require_aligned(op, "out", out.data, 4);
    if (d.B * d.T * d.nh == 0) return;
    const Shape s = shape_of(d);
    with_kernels(attention_wgmma_, d.hd, [&](auto mma, auto hd_tag) {
        using Mma = decltype(mma);
        constexpr int HD = decltype(hd_tag)::value;
        with_heads<max_heads<Mma, HD>()>(attention_heads_, d.nh / d.nkv, [&](auto heads_tag) {
            constexpr int kHeads = decltype(heads_tag)::value;
            const size_t bytes =  // kHeads x q, 2 x (k, v)
                size_t(kHeads + 4) * Mma::template tile_elements<HD, kTile>() * sizeof(bf16) +
                alignment_slack<Mma>();
            const auto kernel = attention_forward_kernel<Mma, HD, kHeads>;
            allow_shared(kernel, bytes);
            kernel<<<dim3(unsigned(d.B * d.nh / kHeads), unsigned(tiles(d.T))), kThreads * kHeads, bytes,
                     stream()>>>(static_cast<bf16*>(out.data), static_cast<float*>(lse.data),
                                 static_cast<const bf16*>(q.base()), static_cast<const bf16*>(k.base()),
                                 static_cast<const bf16*>(v.base()), s);
            MOE_CUDA_LAUNCHED();
        });
    });
}

void CudaOps::attention_backward(Heads dq, Heads dk, Heads dv, Tensor dout, Heads q, Heads k, Heads v, Tensor out,
                                 Tensor lse, Write write, std::optional<double> rope_theta) {
    const char* op = "attention_backward";
    const AttentionDims d = dims_of(op, q, k, v, out, lse);
    const AttentionGradRows rows_at = attention_grad_rows(op, d, dq, dk, dv, dout);
    cuda::require_dtype(op, "dout", dout, DType::BF16);
    cuda::require_dtype(op, "dq", dq.t, DType::BF16);
    cuda::require_dtype(op, "dk", dk.t, DType::BF16);
    cuda::require_dtype(op, "dv", dv.t, DType::BF16);
    require_aligned(op, "q", q.base(), 16);
    require_aligned(op, "k", k.base(), 16);
    require_aligned(op, "v", v.base(), 16);
    require_aligned(op, "dout", dout.data, 16);
    require_aligned(op, "out", out.data, 16);
    require_aligned(op, "dq", dq.base(), 4);
    require_aligned(op, "dk", dk.base(), 4);
    require_aligned(op, "dv", dv.base(), 4);
    if ((dq.empty() && dk.empty() && dv.empty()) || d.B * d.T * d.nh == 0) return;
    const Shape s = shape_of(d, rows_at);
    const auto* pq = static_cast<const bf16*>(q.base());
    const auto* pk = static_cast<const bf16*>(k.base());
    const auto* pv = static_cast<const bf16*>(v.base());
    const auto* pdo = static_cast<const bf16*>(dout.data);
    const auto* plse = static_cast<const float*>(lse.data);
    const float* rope = rope_theta ? rope_table(d.T, d.hd, *rope_theta) : nullptr;

    const int64_t rows = d.B * d.T * d.nh;
    auto* delta = static_cast<float*>(scratch(size_t(rows) * sizeof(float)));
    with_head_dim(d.hd, [&](auto hd_tag) {
        constexpr int HD = decltype(hd_tag)::value, kDeltaThreads = 256;
        const int64_t rows_a_block = kDeltaThreads / 32 * (32 / (HD / 8));
        attention_delta_kernel<HD><<<cuda::blocks_for(rows, int(rows_a_block)), kDeltaThreads, 0, stream()>>>(
            delta, pdo, static_cast<const bf16*>(out.data), rows, s.T, s.nh);
    });
    MOE_CUDA_LAUNCHED();

    with_kernels(attention_wgmma_, d.hd, [&](auto mma, auto hd_tag) {
        using Mma = decltype(mma);
        constexpr int HD = decltype(hd_tag)::value;
        constexpr int kRows = kBwdRows<HD>;
        // tiles of 64 rows and of kRows: `wide` of the first, `narrow` of the second
        const auto tile_bytes = [](int wide, int narrow) {
            return (size_t(wide) * Mma::template tile_elements<HD, kTile>() +
                    size_t(narrow) * Mma::template tile_elements<HD, kRows>()) *
                       sizeof(bf16) +
                   alignment_slack<Mma>();
        };
        if (!dk.empty() || !dv.empty()) {
            // k, v; 2 x (q, dout); 2 x (lse, delta)
            const size_t bytes = tile_bytes(2, 4) + 4 * kRows * sizeof(float);
            const auto kernel = attention_dkdv_kernel<Mma, HD>;
            allow_shared(kernel, bytes);
            kernel<<<dim3(unsigned(d.B * d.nkv), unsigned(tiles(d.T))), kThreads, bytes, stream()>>>(
                static_cast<bf16*>(dk.base()), static_cast<bf16*>(dv.base()), pq, pk, pv, pdo, plse, delta, rope, s,
                write == Write::add);
            MOE_CUDA_LAUNCHED();
        }
        if (!dq.empty()) {
            with_heads<max_heads<Mma, HD>()>(attention_heads_, d.nh / d.nkv, [&](auto heads_tag) {
                constexpr int kHeads = decltype(heads_tag)::value;
                const auto kernel = attention_dq_kernel<Mma, HD, kHeads>;  // kHeads x (q, dout); stages x (k, v)
                const size_t bytes = tile_bytes(2 * kHeads, 2 * dq_kv_stages(kHeads));
                allow_shared(kernel, bytes);
                kernel<<<dim3(unsigned(d.B * d.nh / kHeads), unsigned(tiles(d.T))), kThreads * kHeads, bytes,
                         stream()>>>(static_cast<bf16*>(dq.base()), pq, pk, pv, pdo, plse, delta, rope, s,
                                     write == Write::add);
                MOE_CUDA_LAUNCHED();
            });
        }
    });
}

}  // namespace moe
