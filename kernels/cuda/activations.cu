// SiLU and SwiGLU on the GPU, bf16 in and out, fp32 inside:
// silu(x) = x s(x), silu'(x) = s(x) (1 + x (1 - s(x))), s the sigmoid.
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fast_math.cuh"

namespace moe {

namespace {

using cuda::bf16;
using cuda::sigmoid;
constexpr int kThreads = 256;

__device__ __forceinline__ float silu_grad(float x, float s) { return s * (1.0f + x * (1.0f - s)); }

#define MOE_GRID_LOOP(i, n) \
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void silu_forward_kernel(bf16* y, const bf16* x, int64_t n) {
    MOE_GRID_LOOP(i, n) {
        const float v = __bfloat162float(x[i]);
        y[i] = __float2bfloat16_rn(v * sigmoid(v));
    }
}

__global__ void silu_backward_kernel(bf16* dx, const bf16* dy, const bf16* x, int64_t n) {
    MOE_GRID_LOOP(i, n) {
        const float v = __bfloat162float(x[i]);
        const float g = __bfloat162float(dy[i]) * silu_grad(v, sigmoid(v));
        dx[i] = __float2bfloat16_rn(__bfloat162float(dx[i]) + g);
    }
}

// SwiGLU works on the experts' [rows, 2I] activations, the largest tensors
// of a step: W = 8 neighbouring columns per thread through 16-byte loads and
// stores where I and every pointer allow it (W = 1 otherwise); the same fp32
// math either way. Chunk c is row c / (I/W), columns from (c % (I/W)) W; the
// row's gate is gate_up's first I columns, its up the next I.
template <int W>
__global__ void swiglu_forward_kernel(bf16* out, const bf16* gate_up, int64_t chunks, int64_t I) {
    MOE_GRID_LOOP(c, chunks) {
        const int64_t r = c / (I / W), col = c % (I / W) * W;
        const bf16* gu = gate_up + r * 2 * I + col;
        float g[W], u[W], o[W];
        cuda::load_chunk(g, gu);
        cuda::load_chunk(u, gu + I);
#pragma unroll
        for (int i = 0; i < W; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
        cuda::store_chunk(out + r * I + col, o);
    }
}

template <int W>
__global__ void swiglu_backward_kernel(bf16* dgate_up, const bf16* dout, const bf16* gate_up, int64_t chunks,
                                       int64_t I) {
    MOE_GRID_LOOP(c, chunks) {
        const int64_t r = c / (I / W), col = c % (I / W) * W;
        const bf16* gu = gate_up + r * 2 * I + col;
        float g[W], u[W], d[W], dg[W], du[W];
        cuda::load_chunk(g, gu);
        cuda::load_chunk(u, gu + I);
        cuda::load_chunk(d, dout + r * I + col);
#pragma unroll
        for (int i = 0; i < W; ++i) {
            const float s = sigmoid(g[i]);
            dg[i] = d[i] * u[i] * silu_grad(g[i], s);
            du[i] = d[i] * g[i] * s;
        }
        bf16* dgu = dgate_up + r * 2 * I + col;
        cuda::store_chunk(dgu, dg);
        cuda::store_chunk(dgu + I, du);
    }
}

#undef MOE_GRID_LOOP

void require_bf16(const char* op, std::initializer_list<const Tensor*> ts) {
    for (const Tensor* t : ts) cuda::require_dtype(op, "every tensor", *t, DType::BF16);
}

template <class T> T* data(const Tensor& t) { return static_cast<T*>(t.data); }

}  // namespace

void CudaOps::silu_forward(Tensor y, Tensor x) {
    check_same_shape("silu_forward", y, x);
    require_bf16("silu_forward", {&y, &x});
    const int64_t n = x.numel();
    if (!n) return;
    silu_forward_kernel<<<cuda::blocks_for(n, kThreads, 8192), kThreads, 0, stream_>>>(data<bf16>(y),
                                                                                       data<const bf16>(x), n);
    MOE_CUDA_LAUNCHED();
}

void CudaOps::silu_backward(Tensor dx, Tensor dy, Tensor x) {
    if (dx.empty()) return;
    check_same_shape("silu_backward", dx, x);
    check_same_shape("silu_backward", dy, x);
    require_bf16("silu_backward", {&dx, &dy, &x});
    const int64_t n = x.numel();
    if (!n) return;
    silu_backward_kernel<<<cuda::blocks_for(n, kThreads, 8192), kThreads, 0, stream_>>>(
        data<bf16>(dx), data<const bf16>(dy), data<const bf16>(x), n);
    MOE_CUDA_LAUNCHED();
}

namespace {
// Rows R and width I of out [R,I] for gate_up [R,2I], all BF16.
int64_t swiglu_rows(const char* op, const Tensor& out, const Tensor& gate_up) {
    const int64_t I = out.row_size();
    check(out.ndim == 2 && gate_up.ndim == 2 && gate_up.dim(0) == out.dim(0) && gate_up.dim(1) == 2 * I, op,
          "expected out [R,I] and gate_up [R,2I]; got out " + out.shape_str() + ", gate_up " + gate_up.shape_str());
    require_bf16(op, {&out, &gate_up});
    return out.dim(0);
}
}  // namespace

void CudaOps::swiglu_forward(Tensor out, Tensor gate_up) {
    const int64_t R = swiglu_rows("swiglu_forward", out, gate_up), I = out.row_size();
    if (!R || !I) return;
    cuda::with_chunk_width(I, {out.data, gate_up.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        const int64_t chunks = R * I / W;
        swiglu_forward_kernel<W><<<cuda::blocks_for(chunks, kThreads, 8192), kThreads, 0, stream_>>>(
            data<bf16>(out), data<const bf16>(gate_up), chunks, I);
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) {
    const int64_t R = swiglu_rows("swiglu_backward", dout, gate_up), I = dout.row_size();
    check_same_shape("swiglu_backward", dgate_up, gate_up);
    require_bf16("swiglu_backward", {&dgate_up});
    if (!R || !I) return;
    cuda::with_chunk_width(I, {dgate_up.data, dout.data, gate_up.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        const int64_t chunks = R * I / W;
        swiglu_backward_kernel<W><<<cuda::blocks_for(chunks, kThreads, 8192), kThreads, 0, stream_>>>(
            data<bf16>(dgate_up), data<const bf16>(dout), data<const bf16>(gate_up), chunks, I);
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
