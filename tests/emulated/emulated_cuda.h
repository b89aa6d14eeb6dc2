// The rest of what CUDA kernels and their host code use, for emulated blocks:
// kernel launches (emulate_kernels.py turns each `<<<...>>>` into
// launch_kernel), the warp intrinsics beyond emulated_ptx.h's (masked
// barriers, shuffles, ballot, match), atomics (threads take turns, so a
// plain update is atomic), cub's radix sort (stable, as cub's is), and the
// GEMM that stands in for cuBLASLt (emulated_runtime.cpp).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "kernels/tensor.h"
#include "tests/emulated/emulated_block.h"
#include "tests/emulated/emulated_ptx.h"

namespace moe::emulated {

template <class F> void launch_kernel(dim3 grid, dim3 threads, size_t shared_bytes, F&& kernel) {
    if (threads.y != 1 || threads.z != 1 || grid.z != 1 || threads.x > unsigned(kMaxThreads))
        throw std::runtime_error("emulated launch: blocks of at most 1024 threads in x, grids in x and y");
    if (grid.x == 0 || grid.y == 0 || threads.x == 0) return;
    launch(grid, int(threads.x), shared_bytes, std::function<void()>(kernel));
}

inline unsigned ballot(unsigned mask, bool p) {
    const std::array<uint64_t, 32> all = offers(mask, uint64_t(p));
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= unsigned(all[size_t(l)] != 0) << l;
    return r;
}
template <class T> unsigned match_any(unsigned mask, T x) {
    const std::array<uint64_t, 32> all = offers(mask, x);
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= unsigned((mask >> l & 1) && all[size_t(l)] == all[size_t(lane())]) << l;
    return r;
}

// out (m x n, column-major, ld ldc) = op(a) op(b) (+ bias per row) + beta out,
// in fp32 from bf16 or fp32 operands: CudaOps::gemm's contract.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, DType a_type, int64_t lda,
          const void* b, DType b_type, int64_t ldb, void* out, DType out_type, int64_t ldc, float beta,
          const void* bias);

}  // namespace moe::emulated

template <class T> T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
template <class T> T atomicMin(T* p, T v) {
    const T old = *p;
    *p = std::min(old, v);
    return old;
}
template <class T> T atomicMax(T* p, T v) {
    const T old = *p;
    *p = std::max(old, v);
    return old;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// The runtime's template overload for kernels (cuda_runtime.h's, nvcc only).
template <class T> cudaError_t cudaFuncSetAttribute(T*, cudaFuncAttribute, int) { return cudaSuccess; }

namespace cub {
struct DeviceRadixSort {
    template <class K, class V>
    static cudaError_t SortPairs(void* storage, size_t& bytes, const K* keys_in, K* keys_out, const V* values_in,
                                 V* values_out, int n, int, int, cudaStream_t) {
        if (!storage) {
            bytes = 16;
            return cudaSuccess;
        }
        std::vector<int> order(static_cast<size_t>(n));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return keys_in[a] < keys_in[b]; });
        std::vector<K> keys(static_cast<size_t>(n));
        std::vector<V> values(static_cast<size_t>(n));
        for (size_t i = 0; i < order.size(); ++i) {
            keys[i] = keys_in[order[i]];
            values[i] = values_in[order[i]];
        }
        std::copy(keys.begin(), keys.end(), keys_out);
        std::copy(values.begin(), values.end(), values_out);
        return cudaSuccess;
    }
};
}  // namespace cub

#define __syncwarp(...) ::moe::emulated::syncwarp(__VA_ARGS__)
#define __shfl_sync(mask, x, src) ::moe::emulated::shfl(mask, x, src)
#define __shfl_up_sync(mask, x, d)                                                                  \
    ::moe::emulated::shfl(mask, x, ::moe::emulated::lane() >= (d) ? ::moe::emulated::lane() - (d) \
                                                                  : ::moe::emulated::lane())
#define __ballot_sync(mask, p) ::moe::emulated::ballot(mask, p)
#define __match_any_sync(mask, x) ::moe::emulated::match_any(mask, x)
#define __popc(x) __builtin_popcount(x)
#define __ldca(p) (*(p))
#define __stwb(p, v) (void)(*(p) = (v))
#define __expf(x) expf(x)
#define __trap() std::abort()
