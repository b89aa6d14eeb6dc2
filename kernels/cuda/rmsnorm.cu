// RMSNorm on the GPU: x, y, dx, dy and w in bf16 (w a working copy), rstd in
// fp32, statistics and dw in fp32. One warp per row for y and dx; dw is a
// fixed-order column reduction (column_sums.h).
#include "kernels/cuda/column_sums.h"
#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
constexpr int kWarps = 8;  // rows per block

__global__ void rmsnorm_forward_kernel(bf16* y, float* rstd, const bf16* x, const bf16* w, int64_t R, int D,
                                       float eps) {
    const int lane = threadIdx.x & 31;
    const int64_t r = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
    if (r >= R) return;
    const bf16* xr = x + r * D;
    float ss = 0;
    for (int i = lane; i < D; i += 32) {
        const float v = __bfloat162float(xr[i]);
        ss += v * v;
    }
    ss = cuda::warp_sum(ss);
    const float s = rsqrtf(ss / float(D) + eps);
    if (lane == 0) rstd[r] = s;
    bf16* yr = y + r * D;
    for (int i = lane; i < D; i += 32) yr[i] = __float2bfloat16_rn(__bfloat162float(xr[i]) * s * __bfloat162float(w[i]));
}

// dx (+)= rstd * (w dy - xhat * mean(w dy xhat)), xhat = x * rstd.
__global__ void rmsnorm_dx_kernel(bf16* dx, const bf16* dy, const bf16* x, const bf16* w, const float* rstd,
                                  int64_t R, int D, bool accumulate) {
    const int lane = threadIdx.x & 31;
    const int64_t r = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
    if (r >= R) return;
    const bf16 *xr = x + r * D, *dyr = dy + r * D;
    const float s = rstd[r];
    float dot = 0;
    for (int i = lane; i < D; i += 32)
        dot += __bfloat162float(w[i]) * __bfloat162float(dyr[i]) * __bfloat162float(xr[i]);
    const float m = cuda::warp_sum(dot) * s / float(D);
    bf16* dxr = dx + r * D;
    for (int i = lane; i < D; i += 32) {
        const float g = s * (__bfloat162float(w[i]) * __bfloat162float(dyr[i]) - __bfloat162float(xr[i]) * s * m);
        dxr[i] = __float2bfloat16_rn(accumulate ? __bfloat162float(dxr[i]) + g : g);
    }
}

int64_t rows_of(const char* op, const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w) {
    const int64_t D = w.numel();
    check(D > 0 && x.numel() % D == 0 && y.numel() == x.numel() && rstd.numel() == x.numel() / D, op,
          "expected x [R,D], w [D], rstd [R] and an output like x; got x " + x.shape_str() + ", w " + w.shape_str() +
              ", rstd " + rstd.shape_str() + ", output " + y.shape_str());
    cuda::require_dtype(op, "x", x, DType::BF16);
    cuda::require_dtype(op, "w", w, DType::BF16);
    cuda::require_dtype(op, "rstd", rstd, DType::F32);
    return x.numel() / D;
}

}  // namespace

void CudaOps::rmsnorm_forward(Tensor y, Tensor rstd, Tensor x, Tensor w, double eps) {
    const int64_t R = rows_of("rmsnorm_forward", y, rstd, x, w);
    cuda::require_dtype("rmsnorm_forward", "y", y, DType::BF16);
    if (!R) return;
    const unsigned blocks = unsigned((R + kWarps - 1) / kWarps);
    rmsnorm_forward_kernel<<<blocks, kWarps * 32, 0, stream_>>>(
        static_cast<bf16*>(y.data), static_cast<float*>(rstd.data), static_cast<const bf16*>(x.data),
        static_cast<const bf16*>(w.data), R, int(w.numel()), float(eps));
    MOE_CUDA_LAUNCHED();
}

void CudaOps::rmsnorm_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd, Write dx_write,
                               Write dw_write) {
    const int64_t R = rows_of("rmsnorm_backward", dy, rstd, x, w);
    const int D = int(w.numel());
    check((dx.empty() || dx.numel() == x.numel()) && (dw.empty() || dw.numel() == D), "rmsnorm_backward",
          "gradients dx " + dx.shape_str() + ", dw " + dw.shape_str() + " for x " + x.shape_str() + ", w " +
              w.shape_str());
    cuda::require_dtype("rmsnorm_backward", "dy", dy, DType::BF16);
    cuda::require_dtype("rmsnorm_backward", "dx", dx, DType::BF16);
    cuda::require_dtype("rmsnorm_backward", "dw", dw, DType::F32);
    const bf16 *pdy = static_cast<const bf16*>(dy.data), *px = static_cast<const bf16*>(x.data);
    const float* pr = static_cast<const float*>(rstd.data);
    if (R && !dx.empty()) {
        const unsigned blocks = unsigned((R + kWarps - 1) / kWarps);
        rmsnorm_dx_kernel<<<blocks, kWarps * 32, 0, stream_>>>(static_cast<bf16*>(dx.data), pdy, px,
                                                               static_cast<const bf16*>(w.data), pr, R, D,
                                                               dx_write == Write::add);
        MOE_CUDA_LAUNCHED();
    }
    if (!dw.empty()) cuda::column_sums(*this, static_cast<float*>(dw.data), dw_write, pdy, px, pr, R, D);
}

}  // namespace moe
