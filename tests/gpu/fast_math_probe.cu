// The GPU side of test_cuda_fast_math: one thread an input.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/fast_math.cuh"
#include "tests/gpu/fast_math_probe.h"

namespace moe::test {

namespace {

__global__ void fast_math_kernel(float* y, const float* x, int64_t n, FastMath f) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = f == FastMath::exp2 ? cuda::exp2_ftz(x[i]) : f == FastMath::rcp ? cuda::rcp_ftz(x[i]) : cuda::log2_ftz(x[i]);
}

}  // namespace

void fast_math_on_gpu(FastMath f, float* y, const float* x, int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    fast_math_kernel<<<unsigned((n + 255) / 256), 256, 0, stream>>>(y, x, n, f);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe::test
