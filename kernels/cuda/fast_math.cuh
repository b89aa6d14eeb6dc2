// fp32 exponentials, reciprocals and logarithms as one special-function-unit
// instruction each (MUFU.EX2, MUFU.RCP, MUFU.LG2), for the kernels whose
// elements each take several: the attention softmax, SwiGLU, the INL
// dynamics, the cross-entropy. The accurate forms cost far more on sm_90a
// (CUDA 13.0, instructions an element in an unrolled loop): expf 8, 1 / x 17
// (an IEEE division with its slow path), log1pf 29; a sigmoid 26 against 4
// here, a softplus 43 against 6. Where a kernel's elements each take two
// sigmoids and a softplus, that is the difference between the issue rate and
// the memory bounding it.
//
// `.ftz`: subnormal inputs and results are zeros of their sign (without it
// MUFU.EX2 takes three more instructions to keep them).
// Errors, as CUDA (for its intrinsics on these instructions) and the PTX ISA
// state them: 2^x within 2 ulp, 1/x within 1 ulp, log2 within 2^-22
// absolute for x in [0.5, 2] and 2 ulp elsewhere (tests/gpu/fast_math_probe.h
// holds these; gpu_cuda_fast_math checks them on the GPU, the emulator can
// apply them); e^x within 2 + floor(1.173 |x|) ulp (x log2 e rounded first),
// ln within 2^-21.41 absolute near 1 and 3 ulp elsewhere. Each is far inside
// the bf16 its kernel writes (2^-8 relative) and the tolerances the gpu
// tests hold it to.
#pragma once

namespace moe::cuda {

__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float rcp_ftz(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float log2_ftz(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

constexpr float kLog2e = 1.442695041f, kLn2 = 0.6931471806f;

__device__ __forceinline__ float exp_ftz(float x) { return exp2_ftz(x * kLog2e); }
__device__ __forceinline__ float log_ftz(float x) { return log2_ftz(x) * kLn2; }

// 1 / (1 + e^-x): 0 below x = -87.3 (the reciprocal flushed, or of inf)
// and 1 above 87.3 (e^-x flushed), as the exact value rounds to in fp32 but
// for subnormals.
__device__ __forceinline__ float sigmoid(float x) { return rcp_ftz(1.0f + exp_ftz(-x)); }

}  // namespace moe::cuda
