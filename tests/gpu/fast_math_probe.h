// fast_math.cuh's functions evaluated on the GPU for the host
// (fast_math_probe.cu), and the error bounds they are held to: CUDA's for its
// intrinsics on the same instructions, which test_cuda_fast_math checks on
// the GPU and the emulator applies with MOE_EMULATED_APPROX=bounds.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe::test {

namespace fast_math_bounds {
constexpr int kExp2Ulps = 2;               // ex2.approx.ftz
constexpr int kRcpUlps = 1;                // rcp.approx.ftz
constexpr int kLog2Ulps = 2;               // lg2.approx.ftz, x outside [0.5, 2]
constexpr float kLog2NearOne = 0x1p-22f;   // lg2.approx.ftz, absolute, x in [0.5, 2]
}  // namespace fast_math_bounds

enum class FastMath { exp2, rcp, log2 };

// y[i] = f(x[i]) for i < n, queued on `stream` (device pointers).
void fast_math_on_gpu(FastMath f, float* y, const float* x, int64_t n, cudaStream_t stream);

}  // namespace moe::test
