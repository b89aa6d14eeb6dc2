// Helpers every CUDA op family uses: error checks that throw with the call
// and the place, argument checks, bf16 <-> fp32 element access, launch sizes
// and fixed-order warp/block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cuda/cuda_ops.h"

namespace moe {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line);

}  // namespace moe

// A failed CUDA runtime call throws std::runtime_error naming it.
#define MOE_CUDA_CHECK(call)                                                                   \
    do {                                                                                       \
        cudaError_t moe_err_ = (call);                                                         \
        if (moe_err_ != cudaSuccess) ::moe::throw_cuda_error(moe_err_, #call, __FILE__, __LINE__); \
    } while (0)

// After a kernel launch: a bad configuration throws here, not at a later sync.
#define MOE_CUDA_LAUNCHED() MOE_CUDA_CHECK(cudaGetLastError())

namespace moe {
namespace cuda {

using bf16 = __nv_bfloat16;

// The dtype an op requires of a tensor; a mismatch is a programming error.
inline void require_dtype(const char* op, const char* name, const Tensor& t, DType want) {
    if (!t.empty() && t.dtype != want)
        throw std::invalid_argument(std::string(op) + ": " + name + " must be " + dtype_name(want) + ", got " +
                                    dtype_name(t.dtype) + " " + t.shape_str());
}

// Loads and stores of one element as fp32 whatever the storage type.
__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float x) { p[i] = x; }
__device__ __forceinline__ void store(bf16* p, int64_t i, float x) { p[i] = __float2bfloat16_rn(x); }

// W consecutive bf16 as floats, and back (W = 8: one 16-byte access).
template <int W> __device__ __forceinline__ void load_chunk(float (&out)[W], const bf16* p) {
    if constexpr (W == 8) {
        const uint4 u = *reinterpret_cast<const uint4*>(p);
        const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(pairs[i]);
            out[2 * i] = f.x;
            out[2 * i + 1] = f.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < W; ++i) out[i] = __bfloat162float(p[i]);
    }
}
template <int W> __device__ __forceinline__ void store_chunk(bf16* p, const float (&in)[W]) {
    if constexpr (W == 8) {
        uint4 u;
        auto* pairs = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
        for (int i = 0; i < 4; ++i) pairs[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
        *reinterpret_cast<uint4*>(p) = u;
    } else {
#pragma unroll
        for (int i = 0; i < W; ++i) p[i] = __float2bfloat16_rn(in[i]);
    }
}

// W consecutive floats stored (W = 8: two 16-byte stores, p on 16 bytes).
template <int W> __device__ __forceinline__ void store_chunk(float* p, const float (&in)[W]) {
    if constexpr (W == 8) {
        reinterpret_cast<float4*>(p)[0] = make_float4(in[0], in[1], in[2], in[3]);
        reinterpret_cast<float4*>(p)[1] = make_float4(in[4], in[5], in[6], in[7]);
    } else {
#pragma unroll
        for (int i = 0; i < W; ++i) p[i] = in[i];
    }
}

// Whether rows of n bf16 move as 16-byte chunks of 8: n a multiple of 8 and
// every pointer (null ones pass) on 16 bytes.
inline bool chunks_of_8(int64_t n, std::initializer_list<const void*> ptrs) {
    if (n % 8) return false;
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % 16) return false;
    return true;
}

// Calls launch with the chunk width as a type: 8 when chunks_of_8, else 1.
template <class Launch> void with_chunk_width(int64_t n, std::initializer_list<const void*> ptrs, Launch&& launch) {
    if (chunks_of_8(n, ptrs))
        launch(std::integral_constant<int, 8>());
    else
        launch(std::integral_constant<int, 1>());
}

// Blocks of `threads` covering n elements, capped so the grid stays legal.
inline unsigned blocks_for(int64_t n, int threads, int64_t cap = int64_t(1) << 20) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    return unsigned(b < cap ? b : cap);
}

// For a launch over many tensors, each with a run of blocks: the index of
// the entry of slices (sorted by first_block) whose run holds this block.
template <class Slice> __device__ __forceinline__ int slice_of_block(const Slice* slices, int count) {
    int lo = 0, hi = count - 1;  // the last slice starting at or before this block
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (slices[mid].first_block <= blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ double warp_sum(double x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `shared` holds 32 values. The order is fixed by the launch.
template <class T> __device__ T block_sum(T x, T* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads();  // shared may still be read by a previous call
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < warps ? shared[lane] : T(0);
    return warp_sum(x);
}

__device__ __forceinline__ float block_max(float x, float* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < warps ? shared[lane] : -INFINITY;
    return warp_max(x);
}

}  // namespace cuda
}  // namespace moe
