// AdamW on fp32 master weights, in PyTorch's order (kernels/cpu/adamw.cpp):
// decoupled decay, then the bias-corrected Adam update with the gradient
// scaled first (clipping); the bf16 working copy is rewritten in the same
// pass, so the forward never reads a stale weight.
#include <cmath>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

constexpr int kThreads = 256;

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, cuda::bf16* work, int64_t n,
                             float beta1, float beta2, float eps, float decay, float step_size, float sqrt_c2,
                             float grad_scale) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float g = grad[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float p = param[i] * decay - step_size * mi / (sqrtf(vi) / sqrt_c2 + eps);
        param[i] = p;
        if (work) work[i] = __float2bfloat16_rn(p);
    }
}

}  // namespace

void CudaOps::adamw_step(Tensor param, Tensor grad, Tensor m, Tensor v, Tensor work, const AdamWParams& a) {
    check_same_shape("adamw_step", param, grad);
    check_same_shape("adamw_step", param, m);
    check_same_shape("adamw_step", param, v);
    cuda::require_dtype("adamw_step", "param", param, DType::F32);
    check(a.step >= 1, "adamw_step", "step is 1-based, got " + std::to_string(a.step));
    const bool separate = !work.empty() && work.data != param.data;
    if (separate) {
        check(work.numel() == param.numel(), "adamw_step", "work " + work.shape_str() + " is not like " + param.shape_str());
        cuda::require_dtype("adamw_step", "work", work, DType::BF16);
    }
    const int64_t n = param.numel();
    if (!n) return;
    const double c1 = 1 - std::pow(a.beta1, double(a.step)), c2 = 1 - std::pow(a.beta2, double(a.step));
    adamw_kernel<<<cuda::blocks_for(n, kThreads, 8192), kThreads, 0, stream_>>>(
        static_cast<float*>(param.data), static_cast<const float*>(grad.data), static_cast<float*>(m.data),
        static_cast<float*>(v.data), separate ? static_cast<cuda::bf16*>(work.data) : nullptr, n, float(a.beta1),
        float(a.beta2), float(a.eps), float(1 - a.lr * a.weight_decay), float(a.lr / c1), float(std::sqrt(c2)),
        float(a.grad_scale));
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
