// RoPE's angles and turn on the GPU, shared by rope.cu's in-place rotation and
// split_qkv's rotation on the way out of the fused projection (qkv.cu): one
// expression, so both give the same bits.
#pragma once
#include "kernels/cuda/common.cuh"

namespace moe::cuda {

// W consecutive (cos, sin) pairs of CudaOps::rope_table (W = 8: four 16-byte
// loads).
template <int W> __device__ __forceinline__ void load_angles(float (&cs)[W], float (&sn)[W], const float* table) {
    if constexpr (W == 8) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float4 f = reinterpret_cast<const float4*>(table)[q];
            cs[2 * q] = f.x;
            sn[2 * q] = f.y;
            cs[2 * q + 1] = f.z;
            sn[2 * q + 1] = f.w;
        }
    } else {
#pragma unroll
        for (int e = 0; e < W; ++e) {
            cs[e] = table[2 * e];
            sn[e] = table[2 * e + 1];
        }
    }
}

// Turns W pairs (a[e], c[e]) = (x_i, x_{i + hd/2}) by their angles, in place.
template <int W>
__device__ __forceinline__ void turn(float (&a)[W], float (&c)[W], const float (&cs)[W], const float (&sn)[W]) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
        const float ai = a[e], ci = c[e];
        a[e] = ai * cs[e] - ci * sn[e];
        c[e] = ai * sn[e] + ci * cs[e];
    }
}

}  // namespace moe::cuda
