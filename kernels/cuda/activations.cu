// SiLU and SwiGLU on the GPU, bf16 in and out, fp32 inside:
// silu(x) = x s(x), silu'(x) = s(x) (1 + x (1 - s(x))), s the sigmoid.
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }
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

// SwiGLU works on the experts' [rows, I] activations, the largest tensors of
// a step: W = 8 elements per thread through 16-byte loads and stores where
// every pointer allows it (W = 1 otherwise); the same fp32 math either way.
template <int W> __global__ void swiglu_forward_kernel(bf16* out, const bf16* gate, const bf16* up, int64_t chunks) {
    MOE_GRID_LOOP(c, chunks) {
        float g[W], u[W], o[W];
        cuda::load_chunk(g, gate + c * W);
        cuda::load_chunk(u, up + c * W);
#pragma unroll
        for (int i = 0; i < W; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
        cuda::store_chunk(out + c * W, o);
    }
}

template <int W>
__global__ void swiglu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                                       int64_t chunks) {
    MOE_GRID_LOOP(c, chunks) {
        float g[W], u[W], d[W], dg[W], du[W];
        cuda::load_chunk(g, gate + c * W);
        cuda::load_chunk(u, up + c * W);
        cuda::load_chunk(d, dout + c * W);
#pragma unroll
        for (int i = 0; i < W; ++i) {
            const float s = sigmoid(g[i]);
            dg[i] = d[i] * u[i] * silu_grad(g[i], s);
            du[i] = d[i] * g[i] * s;
        }
        if (dgate) cuda::store_chunk(dgate + c * W, dg);
        if (dup) cuda::store_chunk(dup + c * W, du);
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

void CudaOps::swiglu_forward(Tensor out, Tensor gate, Tensor up) {
    check_same_shape("swiglu_forward", out, gate);
    check_same_shape("swiglu_forward", out, up);
    require_bf16("swiglu_forward", {&out, &gate, &up});
    const int64_t n = out.numel();
    if (!n) return;
    cuda::with_chunk_width(n, {out.data, gate.data, up.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        swiglu_forward_kernel<W><<<cuda::blocks_for(n / W, kThreads, 8192), kThreads, 0, stream_>>>(
            data<bf16>(out), data<const bf16>(gate), data<const bf16>(up), n / W);
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    check_same_shape("swiglu_backward", dout, gate);
    check_same_shape("swiglu_backward", dout, up);
    if (!dgate.empty()) check_same_shape("swiglu_backward", dgate, gate);
    if (!dup.empty()) check_same_shape("swiglu_backward", dup, up);
    require_bf16("swiglu_backward", {&dgate, &dup, &dout, &gate, &up});
    const int64_t n = dout.numel();
    if (!n || (dgate.empty() && dup.empty())) return;
    cuda::with_chunk_width(n, {dgate.data, dup.data, dout.data, gate.data, up.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        swiglu_backward_kernel<W><<<cuda::blocks_for(n / W, kThreads, 8192), kThreads, 0, stream_>>>(
            data<bf16>(dgate), data<bf16>(dup), data<const bf16>(dout), data<const bf16>(gate), data<const bf16>(up),
            n / W);
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
