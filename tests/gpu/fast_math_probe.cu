// The GPU side of test_cuda_fast_math: one thread an input.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda/fast_math.cuh"
#include "tests/gpu/fast_math_probe.h"

namespace moe::test {

namespace {

__global__ void fast_math_kernel(float* y, const float* x, int n, FastMath f) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = f == FastMath::exp2 ? cuda::exp2_ftz(x[i]) : f == FastMath::rcp ? cuda::rcp_ftz(x[i]) : cuda::log2_ftz(x[i]);
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("fast_math_on_gpu: ") + what + ": " + cudaGetErrorString(e));
}

}  // namespace

std::vector<float> fast_math_on_gpu(FastMath f, const std::vector<float>& x) {
    const int n = int(x.size());
    const size_t bytes = x.size() * sizeof(float);
    float *dx = nullptr, *dy = nullptr;
    check(cudaMalloc(&dx, bytes), "cudaMalloc");
    check(cudaMalloc(&dy, bytes), "cudaMalloc");
    std::vector<float> y(x.size());
    check(cudaMemcpy(dx, x.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    fast_math_kernel<<<(n + 255) / 256, 256>>>(dy, dx, n, f);
    check(cudaGetLastError(), "launch");
    check(cudaMemcpy(y.data(), dy, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
    check(cudaFree(dx), "cudaFree");
    check(cudaFree(dy), "cudaFree");
    return y;
}

}  // namespace moe::test
