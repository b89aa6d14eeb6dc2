// The INL dynamics update on the GPU, the math of kernels/cpu/dynamics.cpp in
// fp32, elementwise over h, v [N,H] with ctrl [N,3H] = (a | b | g) and mu [H].
// Clamps pass gradient only where lo <= x <= hi and propagate NaN as
// std::clamp does. dmu, and the controller bias's gradient (dctrl's column
// sums, made here so that nothing reads dctrl again for them), sum over rows
// without atomics: a block takes a fixed chunk of rows for a tile of columns
// and writes its column sums to scratch, then column_sums' second half adds
// the chunks in a fixed order.
//
// Both passes make ctrl themselves from the controller's last layer (ctrl =
// act w^T + b): a block's 64 rows x 64 columns of each third are a tensor-
// core product in shared memory, the same in both, never written out, which
// spares a layer ctrl's write, its read in each pass and its keeping
// (N x 3H bf16). dynamics_control writes the same product out.
#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_warp_mma.cuh"  // the warp tile product, shared with attention
#include "kernels/cuda/column_sums.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fast_math.cuh"

namespace moe {

namespace {

using cuda::bf16;
using cuda::load_chunk;
using cuda::require_dtype;
using cuda::sigmoid;
using cuda::store_chunk;

constexpr int kThreads = 256;
constexpr int64_t kRowsPerChunk = 32;  // rows of one dmu partial

struct Params {
    float dt, beta_max, velocity_max, mu_min, mu_max;
};

// As torch's softplus (threshold 20), on the special-function unit
// (fast_math.cuh): within about 5e-7 of log1p(e^x), absolute where that is
// below 1 and relative above (ln's 2^-21.41 near 1; e^x under 2^-24 is lost
// in 1 + e^x), against the 2^-8 of the bf16 v it moves.
__device__ __forceinline__ float softplus(float x) { return x > 20 ? x : cuda::log_ftz(1.0f + cuda::exp_ftz(x)); }
__device__ __forceinline__ float softplus_grad(float x) { return x > 20 ? 1 : sigmoid(x); }
__device__ __forceinline__ bool passes(float x, float lo, float hi) { return lo <= x && x <= hi; }
// std::clamp, NaN in NaN out (fminf/fmaxf would drop the NaN).
__device__ __forceinline__ float clamp(float x, float lo, float hi) { return x < lo ? lo : hi < x ? hi : x; }

// One element's update, with what its backward needs.
struct Step {
    float alpha, beta, gate, mu_c, v_new;
    bool beta_passes, mu_passes, v_passes;  // the clamp did not clip
};

__device__ __forceinline__ Step step(float h, float v, float a, float b, float g, float mu, const Params& p) {
    Step s;
    s.alpha = sigmoid(a);
    const float sp = softplus(b);
    s.beta_passes = sp <= p.beta_max;
    s.beta = p.beta_max < sp ? p.beta_max : sp;  // std::min(sp, beta_max)
    s.gate = sigmoid(g);
    s.mu_passes = passes(mu, p.mu_min, p.mu_max);
    s.mu_c = clamp(mu, p.mu_min, p.mu_max);
    const float u = s.alpha * v - s.beta * (h - s.mu_c);
    s.v_passes = passes(u, -p.velocity_max, p.velocity_max);
    s.v_new = clamp(u, -p.velocity_max, p.velocity_max);
    return s;
}

// The update of W columns of one row at i (ctrl's a, b, g at ca, cb, cg, in
// global or shared memory; mu's at m). h_out, v_out may be h, v themselves:
// each element is read before it is written.
template <int W>
__device__ __forceinline__ void forward_chunk(bf16* h_out, bf16* v_out, const bf16* h, const bf16* v, const bf16* ca,
                                              const bf16* cb, const bf16* cg, const bf16* m_at, int64_t i,
                                              const Params& p) {
    float hi[W], vi[W], a[W], b[W], g[W], m[W], ho[W], vo[W];
    load_chunk(hi, h + i);
    load_chunk(vi, v + i);
    load_chunk(a, ca);
    load_chunk(b, cb);
    load_chunk(g, cg);
    load_chunk(m, m_at);
#pragma unroll
    for (int e = 0; e < W; ++e) {
        const Step s = step(hi[e], vi[e], a[e], b[e], g[e], m[e], p);
        ho[e] = hi[e] + p.dt * s.gate * s.v_new;
        vo[e] = s.v_new;
    }
    store_chunk(h_out + i, ho);
    store_chunk(v_out + i, vo);
}

// A thread takes W neighbouring columns of a row (W = 8: 16-byte accesses).
template <int W>
__global__ void dynamics_forward_kernel(bf16* h_out, bf16* v_out, const bf16* h, const bf16* v, const bf16* ctrl,
                                        const bf16* mu, int64_t N, int64_t H, Params p) {
    const int64_t chunks = N * H / W;
    for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < chunks; k += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = k * W, n = i / H, c = i % H;
        const bf16* cn = ctrl + n * 3 * H + c;
        forward_chunk<W>(h_out, v_out, h, v, cn, cn + H, cn + 2 * H, mu + c, i, p);
    }
}

// ---- ctrl from the controller's last layer, a tile at a time ----------------
// A block (one warpgroup) takes rows n0..n0+63 and columns c0..c0+63 of each
// third: tile t = act[n0.., :C] w[t*H + c0.., :C]^T + b, rounded to bf16 as
// cuBLASLt's bias epilogue rounds a linear's output.
constexpr int kTileRows = attention::kTile;  // 64
constexpr int kTileCols = 64;
constexpr int kControlThreads = attention::kThreads;

template <int C> struct ControlTiles {
    bf16 act[attention::WarpMma::tile_elements<C, kTileRows>()];
    bf16 weight[attention::WarpMma::tile_elements<C, kTileCols>()];
    bf16 ctrl[3][kTileRows][kTileCols];
};

template <int C>
__device__ void control_tiles(ControlTiles<C>& s, const bf16* act, const bf16* weight, const bf16* bias, int64_t n0,
                              int64_t N, int64_t H, int64_t c0) {
    using attention::WarpMma;
    attention::load_tile<WarpMma, C, kTileRows>(s.act, act + n0 * C, C, int(N - n0 < kTileRows ? N - n0 : kTileRows));
    const WarpMma::RowsA<C, false> rows(s.act);
    const int lane = threadIdx.x & 31, r = 16 * (threadIdx.x >> 5) + (lane >> 2), c = 2 * (lane & 3);
    for (int t = 0; t < 3; ++t) {
        attention::load_tile<WarpMma, C, kTileCols>(s.weight, weight + (t * H + c0) * C, C, kTileCols);
        attention::cp_async_commit();
        attention::cp_async_wait<0>();
        __syncthreads();
        float acc[kTileCols / 8][4] = {};
        rows.template abt<kTileCols>(acc, s.weight);
#pragma unroll
        for (int j = 0; j < kTileCols / 8; ++j) {
            const int col = 8 * j + c;
            const float b0 = __bfloat162float(bias[t * H + c0 + col]), b1 = __bfloat162float(bias[t * H + c0 + col + 1]);
            s.ctrl[t][r][col] = __float2bfloat16_rn(acc[j][0] + b0);
            s.ctrl[t][r][col + 1] = __float2bfloat16_rn(acc[j][1] + b1);
            s.ctrl[t][r + 8][col] = __float2bfloat16_rn(acc[j][2] + b0);
            s.ctrl[t][r + 8][col + 1] = __float2bfloat16_rn(acc[j][3] + b1);
        }
        __syncthreads();  // the weight tile read before the next is loaded; the ctrl tile whole
    }
}

// The update of the block's tile, ctrl from shared memory: a thread takes 8
// neighbouring columns of a row (16-byte accesses).
template <int C>
__global__ void __launch_bounds__(kControlThreads)
    dynamics_control_forward_kernel(bf16* h_out, bf16* v_out, const bf16* h, const bf16* v, const bf16* act,
                                    const bf16* weight, const bf16* bias, const bf16* mu, int64_t N, int64_t H,
                                    Params p) {
    __shared__ __align__(16) unsigned char tiles[sizeof(ControlTiles<C>)];
    ControlTiles<C>& s = *reinterpret_cast<ControlTiles<C>*>(tiles);
    const int64_t n0 = int64_t(blockIdx.x) * kTileRows, c0 = int64_t(blockIdx.y) * kTileCols;
    control_tiles<C>(s, act, weight, bias, n0, N, H, c0);
    for (int k = threadIdx.x; k < kTileRows * kTileCols / 8; k += kControlThreads) {
        const int r = k / (kTileCols / 8), cc = k % (kTileCols / 8) * 8;
        if (n0 + r >= N) break;  // later k are later rows
        forward_chunk<8>(h_out, v_out, h, v, &s.ctrl[0][r][cc], &s.ctrl[1][r][cc], &s.ctrl[2][r][cc], mu + c0 + cc,
                         (n0 + r) * H + c0 + cc, p);
    }
}

// The block's ctrl tiles written out: what the forward kernel's block used.
template <int C>
__global__ void __launch_bounds__(kControlThreads)
    dynamics_control_kernel(bf16* ctrl, const bf16* act, const bf16* weight, const bf16* bias, int64_t N, int64_t H) {
    __shared__ __align__(16) unsigned char tiles[sizeof(ControlTiles<C>)];
    ControlTiles<C>& s = *reinterpret_cast<ControlTiles<C>*>(tiles);
    const int64_t n0 = int64_t(blockIdx.x) * kTileRows, c0 = int64_t(blockIdx.y) * kTileCols;
    control_tiles<C>(s, act, weight, bias, n0, N, H, c0);
    for (int k = threadIdx.x; k < 3 * kTileRows * kTileCols / 8; k += kControlThreads) {
        const int t = k / (kTileRows * kTileCols / 8), r = k / (kTileCols / 8) % kTileRows, cc = k % (kTileCols / 8) * 8;
        if (n0 + r < N)
            *reinterpret_cast<uint4*>(ctrl + (n0 + r) * 3 * H + t * H + c0 + cc) =
                *reinterpret_cast<const uint4*>(&s.ctrl[t][r][cc]);
    }
}

// W values of g at i: what is there when accumulate, else zeros.
template <int W>
__device__ __forceinline__ void load_prior(float (&out)[W], const bf16* g, int64_t i, bool accumulate) {
    if (accumulate) {
        load_chunk(out, g + i);
    } else {
#pragma unroll
        for (int e = 0; e < W; ++e) out[e] = 0;
    }
}

// The backward of W columns of one row at i (ctrl's a, b, g at ca, cb, cg,
// in global or shared memory; dctrl's a at ia, b and g H and 2H further):
// dh, dv and dctrl added to when accumulate, else written; dmu's terms
// added to dmu_sum, and dctrl's, rounded to bf16 as dctrl holds them when
// written over, to bias_sum (the controller bias's gradient).
template <int W>
__device__ __forceinline__ void backward_chunk(bf16* dh, bf16* dv, bf16* dctrl, float (&dmu_sum)[W],
                                               float (&bias_sum)[3][W],
                                               const bf16* dh_out, const bf16* dv_out, const bf16* h, const bf16* v,
                                               const bf16* ca, const bf16* cb, const bf16* cg, const float (&m)[W],
                                               int64_t i, int64_t ia, int64_t H, const Params& p, bool accumulate) {
    const int64_t ib = ia + H, ig = ib + H;
    float hi[W], vi[W], a[W], b[W], g[W], g_h[W], g_v[W];
    load_chunk(hi, h + i);
    load_chunk(vi, v + i);
    load_chunk(a, ca);
    load_chunk(b, cb);
    load_chunk(g, cg);
    load_chunk(g_h, dh_out + i);
    load_chunk(g_v, dv_out + i);
    float d_h[W], d_v[W], d_a[W], d_b[W], d_g[W];
    load_prior(d_h, dh, i, accumulate && dh);
    load_prior(d_v, dv, i, accumulate && dv);
    load_prior(d_a, dctrl, ia, accumulate && dctrl);
    load_prior(d_b, dctrl, ib, accumulate && dctrl);
    load_prior(d_g, dctrl, ig, accumulate && dctrl);
#pragma unroll
    for (int e = 0; e < W; ++e) {
        const Step s = step(hi[e], vi[e], a[e], b[e], g[e], m[e], p);
        // h' = h + dt gate v' feeds v' as well as the v' output.
        const float g_vnew = g_v[e] + g_h[e] * p.dt * s.gate;
        const float g_u = s.v_passes ? g_vnew : 0;  // u = alpha v - beta (h - mu_c)
        d_h[e] += g_h[e] - g_u * s.beta;
        d_v[e] += g_u * s.alpha;
        const float t_a = g_u * vi[e] * s.alpha * (1 - s.alpha);
        const float t_b = -g_u * (hi[e] - s.mu_c) * softplus_grad(b[e]);
        const float t_g = g_h[e] * p.dt * s.v_new * s.gate * (1 - s.gate);
        d_a[e] += t_a;
        // A clipped beta adds nothing: an accumulated gradient keeps its bits.
        if (s.beta_passes) d_b[e] += t_b;
        d_g[e] += t_g;
        bias_sum[0][e] += __bfloat162float(__float2bfloat16_rn(t_a));
        if (s.beta_passes) bias_sum[1][e] += __bfloat162float(__float2bfloat16_rn(t_b));
        bias_sum[2][e] += __bfloat162float(__float2bfloat16_rn(t_g));
        if (s.mu_passes) dmu_sum[e] += g_u * s.beta;
    }
    if (dh) store_chunk(dh + i, d_h);
    if (dv) store_chunk(dv + i, d_v);
    if (dctrl) {
        store_chunk(dctrl + ia, d_a);
        store_chunk(dctrl + ib, d_b);
        store_chunk(dctrl + ig, d_g);
    }
}

// Block (x, y) takes rows [x*kRowsPerChunk, +kRowsPerChunk) of the W columns
// from (y*blockDim + thread) * W; dmu_part and bias_part [chunks, 3H] (null:
// not wanted) get the chunk's column sums. dh, dv and dctrl are added to when
// accumulate, else written.
template <int W>
__global__ void dynamics_backward_kernel(bf16* dh, bf16* dv, bf16* dctrl, float* dmu_part, float* bias_part,
                                         const bf16* dh_out, const bf16* dv_out, const bf16* h, const bf16* v,
                                         const bf16* ctrl, const bf16* mu, int64_t N, int64_t H, Params p,
                                         bool accumulate) {
    const int64_t c = (int64_t(blockIdx.y) * blockDim.x + threadIdx.x) * W;
    if (c >= H) return;
    const int64_t chunk = blockIdx.x, n0 = chunk * kRowsPerChunk, n1 = min(N, n0 + kRowsPerChunk);
    float m[W], dmu_sum[W] = {}, bias_sum[3][W] = {};
    load_chunk(m, mu + c);
    for (int64_t n = n0; n < n1; ++n) {
        const int64_t ia = n * 3 * H + c;
        backward_chunk<W>(dh, dv, dctrl, dmu_sum, bias_sum, dh_out, dv_out, h, v, ctrl + ia, ctrl + ia + H,
                          ctrl + ia + 2 * H, m, n * H + c, ia, H, p, accumulate);
    }
    // On 16 bytes: scratch is, H and c are multiples of W.
    if (dmu_part) store_chunk(dmu_part + chunk * H + c, dmu_sum);
    if (bias_part)
        for (int t = 0; t < 3; ++t) store_chunk(bias_part + (chunk * 3 + t) * H + c, bias_sum[t]);
}

// The sums of a tile's 64 rows, for 64 columns (`rows` holding each thread's
// sums of its 8 columns in row group `first`), added over the row groups in
// order into part[column], by the first 64 threads.
__device__ __forceinline__ void tile_column_sums(float* part, float (&rows)[kControlThreads / 8][64],
                                                 const float (&sums)[8], int first, int cc) {
#pragma unroll
    for (int e = 0; e < 8; ++e) rows[first][cc + e] = sums[e];
    __syncthreads();
    if (threadIdx.x < 64) {
        float total = 0;
        for (int j = 0; j < kControlThreads / 8; ++j) total += rows[j][threadIdx.x];
        part[threadIdx.x] = total;
    }
    __syncthreads();  // rows free for the next sums
}

// The same over a block's tile with ctrl made in shared memory (the
// forward's tiles): thread t takes columns c0 + 8 (t % 8), +8 of rows t / 8,
// +16, +32, +48; dmu_part's and bias_part's row x (the block's 64 rows) get
// the column sums, added over the threads in thread order.
template <int C>
__global__ void __launch_bounds__(kControlThreads)
    dynamics_control_backward_kernel(bf16* dh, bf16* dv, bf16* dctrl, float* dmu_part, float* bias_part,
                                     const bf16* dh_out, const bf16* dv_out, const bf16* h, const bf16* v,
                                     const bf16* act, const bf16* weight, const bf16* bias, const bf16* mu, int64_t N,
                                     int64_t H, Params p, bool accumulate) {
    static_assert(kTileCols == 64, "tile_column_sums takes 64 columns");
    __shared__ __align__(16) unsigned char tiles[sizeof(ControlTiles<C>)];
    __shared__ float sum_rows[kControlThreads / 8][kTileCols];
    ControlTiles<C>& s = *reinterpret_cast<ControlTiles<C>*>(tiles);
    const int64_t n0 = int64_t(blockIdx.x) * kTileRows, c0 = int64_t(blockIdx.y) * kTileCols;
    control_tiles<C>(s, act, weight, bias, n0, N, H, c0);
    const int cc = threadIdx.x % 8 * 8, first = threadIdx.x / 8;
    float m[8], dmu_sum[8] = {}, bias_sum[3][8] = {};
    load_chunk(m, mu + c0 + cc);
    for (int r = first; r < kTileRows && n0 + r < N; r += kControlThreads / 8) {
        const int64_t n = n0 + r;
        backward_chunk<8>(dh, dv, dctrl, dmu_sum, bias_sum, dh_out, dv_out, h, v, &s.ctrl[0][r][cc],
                          &s.ctrl[1][r][cc], &s.ctrl[2][r][cc], m, n * H + c0 + cc, n * 3 * H + c0 + cc, H, p,
                          accumulate);
    }
    if (dmu_part) tile_column_sums(dmu_part + blockIdx.x * H + c0, sum_rows, dmu_sum, first, cc);
    if (bias_part)
        for (int t = 0; t < 3; ++t)
            tile_column_sums(bias_part + (blockIdx.x * 3 + t) * H + c0, sum_rows, bias_sum[t], first, cc);
}

Params params(const DynamicsParams& p) {
    return {float(p.dt), float(p.beta_max), float(p.velocity_max), float(p.mu_min), float(p.mu_max)};
}

bf16* bf16_ptr(const Tensor& t) { return static_cast<bf16*>(t.data); }  // dtype checked by the caller

// The controller's last layer for rows [N,H] (H given, or -1 where the
// rows are not 2-D): act [N,C], weight [3H,C], bias [3H], all BF16.
void check_control(const char* op, int64_t H, const Tensor& rows, const Tensor& act, const Tensor& weight,
                   const Tensor& bias) {
    require_dtype(op, "act", act, DType::BF16);
    require_dtype(op, "weight", weight, DType::BF16);
    require_dtype(op, "bias", bias, DType::BF16);
    check(H >= 0 && act.ndim == 2 && weight.ndim == 2 && act.dim(0) == rows.dim(0) && weight.dim(0) == 3 * H &&
              weight.dim(1) == act.dim(1) && bias.numel() == 3 * H,
          op,
          "expected [N,H] rows and the controller's act [N,C], weight [3H,C] and bias [3H]; got " +
              rows.shape_str() + ", act " + act.shape_str() + ", weight " + weight.shape_str() + ", bias " +
              bias.shape_str());
}

// Calls launch(std::integral_constant<int, C>) for the controller sizes the
// tiles take (a multiple of 16 up to 64: the tiles' static shared memory),
// giving its result; false for other sizes.
template <class Launch> bool with_control_size(int64_t C, Launch&& launch) {
    switch (C) {
        case 16: return launch(std::integral_constant<int, 16>{});
        case 32: return launch(std::integral_constant<int, 32>{});
        case 48: return launch(std::integral_constant<int, 48>{});
        case 64: return launch(std::integral_constant<int, 64>{});
        default: return false;
    }
}

// Whole 64-column tiles of 16-byte-aligned rows.
bool tiles_fit(int64_t H, std::initializer_list<const void*> ptrs) {
    if (H % kTileCols) return false;
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % 16) return false;
    return true;
}

dim3 control_grid(int64_t N, int64_t H) {
    return dim3(unsigned((N + kTileRows - 1) / kTileRows), unsigned(H / kTileCols));
}

// h, v BF16 [N,H], ctrl BF16 [N,3H], mu BF16 [H].
void check_inputs(const char* op, const Tensor& h, const Tensor& v, const Tensor& ctrl, const Tensor& mu) {
    require_dtype(op, "h", h, DType::BF16);
    require_dtype(op, "v", v, DType::BF16);
    require_dtype(op, "ctrl", ctrl, DType::BF16);
    require_dtype(op, "mu", mu, DType::BF16);
    const int64_t N = h.dim(0), H = h.dim(1);
    check(h.ndim == 2 && v.numel() == N * H && ctrl.ndim == 2 && ctrl.dim(0) == N && ctrl.dim(1) == 3 * H &&
              mu.numel() == H,
          op,
          "expected h, v [N,H], ctrl [N,3H] and mu [H]; got h " + h.shape_str() + ", v " + v.shape_str() +
              ", ctrl " + ctrl.shape_str() + ", mu " + mu.shape_str());
}

// An output, or a gradient (optional: empty means not wanted), of dtype dt
// with the element count of `like`.
void check_like(const char* op, const char* name, const Tensor& t, const Tensor& like, DType dt,
                bool optional = false) {
    require_dtype(op, name, t, dt);
    if (optional && t.empty()) return;
    check(!t.empty() && t.numel() == like.numel(), op,
          std::string(name) + " " + t.shape_str() + " must have " + std::to_string(like.numel()) +
              " elements, like " + like.shape_str());
}

}  // namespace

void CudaOps::dynamics_control(Tensor ctrl, Tensor act, Tensor weight, Tensor bias) {
    const char* op = "dynamics_control";
    require_dtype(op, "ctrl", ctrl, DType::BF16);
    check_control(op, ctrl.ndim == 2 ? ctrl.dim(1) / 3 : -1, ctrl, act, weight, bias);
    const int64_t N = ctrl.dim(0), H = ctrl.dim(1) / 3;
    if (N * H == 0) return;
    const bool tiled = with_control_size(act.dim(1), [&](auto size) {
        if (!tiles_fit(H, {ctrl.data, act.data, weight.data})) return false;
        dynamics_control_kernel<decltype(size)::value><<<control_grid(N, H), kControlThreads, 0, stream()>>>(
            bf16_ptr(ctrl), bf16_ptr(act), bf16_ptr(weight), bf16_ptr(bias), N, H);
        return true;
    });
    if (tiled) {
        MOE_CUDA_LAUNCHED();
    } else {
        matmul_forward(ctrl, act, weight, bias);
    }
}

void CudaOps::dynamics_forward(Tensor h_out, Tensor v_out, Tensor h, Tensor v, Tensor act, Tensor weight,
                               Tensor bias, Tensor mu, const DynamicsParams& p) {
    const char* op = "dynamics_forward";
    require_dtype(op, "h", h, DType::BF16);
    check_control(op, h.ndim == 2 ? h.dim(1) : -1, h, act, weight, bias);
    const int64_t N = h.dim(0), H = h.dim(1);
    const bool tiled = N * H > 0 && with_control_size(act.dim(1), [&](auto size) {
        if (!tiles_fit(H, {h_out.data, v_out.data, h.data, v.data, act.data, weight.data, mu.data})) return false;
        check_inputs(op, h, v, Tensor(nullptr, DType::BF16, {N, 3 * H}), mu);
        check_like(op, "h_out", h_out, h, DType::BF16);
        check_like(op, "v_out", v_out, h, DType::BF16);
        dynamics_control_forward_kernel<decltype(size)::value><<<control_grid(N, H), kControlThreads, 0, stream()>>>(
            bf16_ptr(h_out), bf16_ptr(v_out), bf16_ptr(h), bf16_ptr(v), bf16_ptr(act), bf16_ptr(weight),
            bf16_ptr(bias), bf16_ptr(mu), N, H, params(p));
        return true;
    });
    if (tiled) {
        MOE_CUDA_LAUNCHED();
        return;
    }
    // Other shapes: ctrl made by the same GEMM as dynamics_control's, in scratch.
    Tensor ctrl(scratch(size_t(N * 3 * H) * sizeof(bf16)), DType::BF16, {N, 3 * H});
    dynamics_control(ctrl, act, weight, bias);
    check_inputs(op, h, v, ctrl, mu);
    check_like(op, "h_out", h_out, h, DType::BF16);
    check_like(op, "v_out", v_out, h, DType::BF16);
    if (N * H == 0) return;
    cuda::with_chunk_width(H, {h_out.data, v_out.data, h.data, v.data, ctrl.data, mu.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        dynamics_forward_kernel<W><<<cuda::blocks_for(N * H / W, kThreads), kThreads, 0, stream()>>>(
            bf16_ptr(h_out), bf16_ptr(v_out), bf16_ptr(h), bf16_ptr(v), bf16_ptr(ctrl), bf16_ptr(mu), N, H,
            params(p));
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::dynamics_backward(Tensor dh, Tensor dv, Tensor dctrl, Tensor dmu, Tensor dbias, Tensor dh_out,
                                Tensor dv_out, Tensor h, Tensor v, Tensor act, Tensor weight, Tensor bias, Tensor mu,
                                const DynamicsParams& p, Write write, Write dw_write) {
    const char* op = "dynamics_backward";
    require_dtype(op, "h", h, DType::BF16);
    check_control(op, h.ndim == 2 ? h.dim(1) : -1, h, act, weight, bias);
    const int64_t N = h.dim(0), H = h.dim(1);
    const Tensor ctrl_shape(nullptr, DType::BF16, {N, 3 * H});
    check_inputs(op, h, v, ctrl_shape, mu);
    check_like(op, "dh_out", dh_out, h, DType::BF16);
    check_like(op, "dv_out", dv_out, h, DType::BF16);
    check_like(op, "dh", dh, h, DType::BF16, true);
    check_like(op, "dv", dv, h, DType::BF16, true);
    check_like(op, "dctrl", dctrl, ctrl_shape, DType::BF16, true);
    check_like(op, "dmu", dmu, mu, DType::F32, true);
    check_like(op, "dbias", dbias, bias, DType::F32, true);
    if (H == 0 || (dh.empty() && dv.empty() && dctrl.empty() && dmu.empty() && dbias.empty())) return;
    if (N == 0) {  // nothing to add; an overwritten dmu or dbias is zero
        if (dw_write == Write::overwrite)
            for (Tensor g : {dmu, dbias})
                if (!g.empty()) zero(g);
        return;
    }
    const bool accumulate = write == Write::add;
    // Tiles: dmu's partial sums a 64-row tile each; else kRowsPerChunk rows
    // a chunk, after ctrl made by the GEMM (scratch holds both).
    const bool tiled = with_control_size(act.dim(1), [&](auto) {
        return tiles_fit(H, {dh.data, dv.data, dctrl.data, dh_out.data, dv_out.data, h.data, v.data, act.data,
                             weight.data, mu.data});
    });
    // Scratch: dmu's partial sums [chunks, H], the bias's [chunks, 3H], ctrl.
    const int64_t rows = tiled ? kTileRows : kRowsPerChunk, chunks = (N + rows - 1) / rows;
    const auto padded = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
    const size_t part_bytes = dmu.empty() ? 0 : padded(size_t(chunks * H) * sizeof(float));
    const size_t bias_bytes = dbias.empty() ? 0 : padded(size_t(chunks * 3 * H) * sizeof(float));
    const size_t ctrl_bytes = tiled ? 0 : size_t(N * 3 * H) * sizeof(bf16);
    const size_t space_bytes = part_bytes + bias_bytes + ctrl_bytes;
    auto* space = static_cast<unsigned char*>(space_bytes ? scratch(space_bytes) : nullptr);
    float* part = part_bytes ? reinterpret_cast<float*>(space) : nullptr;
    float* bias_part = bias_bytes ? reinterpret_cast<float*>(space + part_bytes) : nullptr;
    if (tiled) {
        with_control_size(act.dim(1), [&](auto size) {
            constexpr int C = decltype(size)::value;
            dynamics_control_backward_kernel<C><<<control_grid(N, H), kControlThreads, 0, stream()>>>(
                bf16_ptr(dh), bf16_ptr(dv), bf16_ptr(dctrl), part, bias_part, bf16_ptr(dh_out), bf16_ptr(dv_out),
                bf16_ptr(h),
                bf16_ptr(v), bf16_ptr(act), bf16_ptr(weight), bf16_ptr(bias), bf16_ptr(mu), N, H, params(p),
                accumulate);
            return true;
        });
    } else {
        const Tensor ctrl(space + part_bytes + bias_bytes, DType::BF16, {N, 3 * H});
        dynamics_control(ctrl, act, weight, bias);
        const auto launch = [&](auto width) {
            constexpr int W = decltype(width)::value;
            // A block: the chunks of W of a row, in whole warps, at most kThreads.
            const int64_t cols = H / W;
            const int threads = int(std::min<int64_t>(kThreads, (cols + 31) / 32 * 32));
            const int64_t tiles = (cols + threads - 1) / threads;
            check(tiles <= 65535, op, "h " + h.shape_str() + " has too many columns for one launch");
            dynamics_backward_kernel<W><<<dim3(unsigned(chunks), unsigned(tiles)), threads, 0, stream()>>>(
                bf16_ptr(dh), bf16_ptr(dv), bf16_ptr(dctrl), part, bias_part, bf16_ptr(dh_out), bf16_ptr(dv_out),
                bf16_ptr(h),
                bf16_ptr(v), bf16_ptr(ctrl), bf16_ptr(mu), N, H, params(p), accumulate);
        };
        cuda::with_chunk_width(
            H, {dh.data, dv.data, dctrl.data, dh_out.data, dv_out.data, h.data, v.data, ctrl.data, mu.data}, launch);
    }
    MOE_CUDA_LAUNCHED();
    if (part) cuda::finish_column_sums(*this, dmu.ptr<float>(), dw_write, part, chunks, H);
    if (bias_part) cuda::finish_column_sums(*this, dbias.ptr<float>(), dw_write, bias_part, chunks, 3 * H);
}

}  // namespace moe
