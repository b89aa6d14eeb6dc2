// The INL dynamics update on the GPU, the math of kernels/cpu/dynamics.cpp in
// fp32, elementwise over h, v [N,H] with ctrl [N,3H] = (a | b | g) and mu [H].
// Clamps pass gradient only where lo <= x <= hi and propagate NaN as
// std::clamp does. dmu sums over rows without atomics: a block takes a fixed
// chunk of rows for a tile of columns and writes its column sums to scratch,
// then a second kernel adds the chunks in chunk order.
#include <string>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
using cuda::load;
using cuda::require_dtype;
using cuda::store;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kRowsPerChunk = 32;  // rows of one dmu partial

struct Params {
    float dt, beta_max, velocity_max, mu_min, mu_max;
};

__device__ __forceinline__ float sigmoid(float x) { return 1 / (1 + expf(-x)); }
// As torch's softplus (threshold 20).
__device__ __forceinline__ float softplus(float x) { return x > 20 ? x : log1pf(expf(x)); }
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

// h_out, v_out may be h, v themselves: each element is read before it is written.
__global__ void dynamics_forward_kernel(bf16* h_out, bf16* v_out, const bf16* h, const bf16* v, const bf16* ctrl,
                                        const bf16* mu, int64_t N, int64_t H, Params p) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * H; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t n = i / H, c = i % H;
        const bf16* cn = ctrl + n * 3 * H;
        const float hi = load(h, i);
        const Step s = step(hi, load(v, i), load(cn, c), load(cn, H + c), load(cn, 2 * H + c), load(mu, c), p);
        store(h_out, i, hi + p.dt * s.gate * s.v_new);
        store(v_out, i, s.v_new);
    }
}

// Block (x, y) takes rows [x*kRowsPerChunk, +kRowsPerChunk) of column
// y*blockDim + thread; dmu_part (null: dmu not wanted) gets the chunk's column
// sums. dh, dv and dctrl are added to when accumulate, else written.
__global__ void dynamics_backward_kernel(bf16* dh, bf16* dv, bf16* dctrl, float* dmu_part, const bf16* dh_out,
                                         const bf16* dv_out, const bf16* h, const bf16* v, const bf16* ctrl,
                                         const bf16* mu, int64_t N, int64_t H, Params p, bool accumulate) {
    const auto prior = [accumulate](const bf16* g, int64_t i) { return accumulate ? load(g, i) : 0.0f; };
    const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
    if (c >= H) return;
    const int64_t chunk = blockIdx.x, n0 = chunk * kRowsPerChunk, n1 = min(N, n0 + kRowsPerChunk);
    const float m = load(mu, c);
    float dmu_sum = 0;
    for (int64_t n = n0; n < n1; ++n) {
        const int64_t i = n * H + c, ia = n * 3 * H + c, ib = ia + H, ig = ib + H;
        const float hi = load(h, i), vi = load(v, i), b = load(ctrl, ib);
        const Step s = step(hi, vi, load(ctrl, ia), b, load(ctrl, ig), m, p);
        const float g_h = load(dh_out, i);
        // h' = h + dt gate v' feeds v' as well as the v' output.
        const float g_vnew = load(dv_out, i) + g_h * p.dt * s.gate;
        const float g_u = s.v_passes ? g_vnew : 0;  // u = alpha v - beta (h - mu_c)
        if (dh) store(dh, i, prior(dh, i) + (g_h - g_u * s.beta));
        if (dv) store(dv, i, prior(dv, i) + g_u * s.alpha);
        if (dctrl) {
            store(dctrl, ia, prior(dctrl, ia) + g_u * vi * s.alpha * (1 - s.alpha));
            const float g_b = s.beta_passes ? -g_u * (hi - s.mu_c) * softplus_grad(b) : 0.0f;
            if (s.beta_passes || !accumulate) store(dctrl, ib, prior(dctrl, ib) + g_b);
            store(dctrl, ig, prior(dctrl, ig) + g_h * p.dt * s.v_new * s.gate * (1 - s.gate));
        }
        if (s.mu_passes) dmu_sum += g_u * s.beta;
    }
    if (dmu_part) dmu_part[chunk * H + c] = dmu_sum;
}

// dmu[c] (+)= sum over chunks of part[chunk, c]. A block takes 32 columns;
// warp w sums chunks w, w + kWarps, ... and warp 0 adds the warps' sums in order.
__global__ void dmu_reduce_kernel(float* dmu, const float* part, int64_t chunks, int64_t H, bool accumulate) {
    __shared__ float sums[kWarps][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t c = int64_t(blockIdx.x) * 32 + lane;
    float acc = 0;
    if (c < H)
        for (int64_t ch = warp; ch < chunks; ch += kWarps) acc += part[ch * H + c];
    sums[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && c < H) {
        float total = 0;
        for (int w = 0; w < kWarps; ++w) total += sums[w][lane];
        dmu[c] = accumulate ? dmu[c] + total : total;
    }
}

Params params(const DynamicsParams& p) {
    return {float(p.dt), float(p.beta_max), float(p.velocity_max), float(p.mu_min), float(p.mu_max)};
}

bf16* bf16_ptr(const Tensor& t) { return static_cast<bf16*>(t.data); }  // dtype checked by the caller

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

void CudaOps::dynamics_forward(Tensor h_out, Tensor v_out, Tensor h, Tensor v, Tensor ctrl, Tensor mu,
                               const DynamicsParams& p) {
    const char* op = "dynamics_forward";
    check_inputs(op, h, v, ctrl, mu);
    check_like(op, "h_out", h_out, h, DType::BF16);
    check_like(op, "v_out", v_out, h, DType::BF16);
    const int64_t N = h.dim(0), H = h.dim(1);
    if (N * H == 0) return;
    dynamics_forward_kernel<<<cuda::blocks_for(N * H, kThreads), kThreads, 0, stream()>>>(
        bf16_ptr(h_out), bf16_ptr(v_out), bf16_ptr(h), bf16_ptr(v), bf16_ptr(ctrl), bf16_ptr(mu), N, H, params(p));
    MOE_CUDA_LAUNCHED();
}

void CudaOps::dynamics_backward(Tensor dh, Tensor dv, Tensor dctrl, Tensor dmu, Tensor dh_out, Tensor dv_out,
                                Tensor h, Tensor v, Tensor ctrl, Tensor mu, const DynamicsParams& p, Write write,
                                Write dw_write) {
    const char* op = "dynamics_backward";
    check_inputs(op, h, v, ctrl, mu);
    check_like(op, "dh_out", dh_out, h, DType::BF16);
    check_like(op, "dv_out", dv_out, h, DType::BF16);
    check_like(op, "dh", dh, h, DType::BF16, true);
    check_like(op, "dv", dv, h, DType::BF16, true);
    check_like(op, "dctrl", dctrl, ctrl, DType::BF16, true);
    check_like(op, "dmu", dmu, mu, DType::F32, true);
    const int64_t N = h.dim(0), H = h.dim(1);
    if (H == 0 || (dh.empty() && dv.empty() && dctrl.empty() && dmu.empty())) return;
    if (N == 0) {  // nothing to add; an overwritten dmu is zero
        if (!dmu.empty() && dw_write == Write::overwrite) zero(dmu);
        return;
    }
    const int64_t chunks = (N + kRowsPerChunk - 1) / kRowsPerChunk, tiles = (H + kThreads - 1) / kThreads;
    check(tiles <= 65535, op, "h " + h.shape_str() + " has too many columns for one launch");
    float* part = dmu.empty() ? nullptr : static_cast<float*>(scratch(size_t(chunks * H) * sizeof(float)));
    dynamics_backward_kernel<<<dim3(unsigned(chunks), unsigned(tiles)), kThreads, 0, stream()>>>(
        bf16_ptr(dh), bf16_ptr(dv), bf16_ptr(dctrl), part, bf16_ptr(dh_out), bf16_ptr(dv_out), bf16_ptr(h),
        bf16_ptr(v), bf16_ptr(ctrl), bf16_ptr(mu), N, H, params(p), write == Write::add);
    MOE_CUDA_LAUNCHED();
    if (!part) return;
    dmu_reduce_kernel<<<unsigned((H + 31) / 32), kThreads, 0, stream()>>>(dmu.ptr<float>(), part, chunks, H,
                                                                          dw_write == Write::add);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
