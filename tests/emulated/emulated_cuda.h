// The rest of what CUDA kernels and their host code use, for emulated blocks:
// kernel launches (emulate_kernels.py turns each `<<<...>>>` into
// launch_kernel: checked against the GPU's limits at the call, queued on
// their stream with their arguments as they were then), the warp
// intrinsics beyond emulated_ptx.h's (masked barriers, shuffles, ballot,
// match), atomics (threads take turns, so a plain update is atomic), and
// cub's radix sort (stable, as cub's is; queued on its stream).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <stdexcept>
#include <vector>

#include "tests/emulated/emulated_block.h"
#include "tests/emulated/emulated_ptx.h"
#include "tests/emulated/emulated_streams.h"

namespace moe::emulated {

// Each kernel's cudaFuncAttributeMaxDynamicSharedMemorySize, as set.
inline std::map<const void*, int> dynamic_shared_limit;

// A launch as a GPU takes it: refused at once past the limits of a compute
// 9.0 GPU (dynamic shared memory past 48 KiB only for a kernel allowed it:
// `kernel` is its address, or null for a template the arguments' types
// choose); the arguments as they are now, `call` given them (the kernel's
// call) when its stream gets to it.
template <class Call, class... A>
void launch_kernel(dim3 grid, dim3 threads, size_t shared_bytes, cudaStream_t stream, const void* kernel, Call call,
                   A&&... args) {
    if (threads.y != 1 || threads.z != 1 || grid.z != 1 || threads.x > unsigned(kMaxThreads))
        throw std::runtime_error("emulated launch: blocks of at most 1024 threads in x, grids in x and y");
    if (grid.y > 65535) throw std::runtime_error("emulated launch: a grid's y is at most 65535");
    const auto allowed = dynamic_shared_limit.find(kernel);
    const size_t limit = allowed == dynamic_shared_limit.end() ? 48 << 10 : size_t(allowed->second);
    if (shared_bytes > limit || shared_bytes > 227 << 10)
        throw std::runtime_error("emulated launch: " + std::to_string(shared_bytes) +
                                 " bytes of dynamic shared memory, where the kernel is allowed " +
                                 std::to_string(limit) + " (cudaFuncSetAttribute) and a block at most 227 KiB");
    if (grid.x == 0 || grid.y == 0 || threads.x == 0) return;
    approx_at_bounds();  // a bad MOE_EMULATED_APPROX stops here, not inside a block's thread
    std::tuple<std::decay_t<A>...> params(std::forward<A>(args)...);
    enqueue(stream, [=] { launch(grid, int(threads.x), shared_bytes, [&] { std::apply(call, params); }); });
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
template <class T> cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attribute, int value) {
    if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize)
        ::moe::emulated::dynamic_shared_limit[reinterpret_cast<const void*>(kernel)] = value;
    return cudaSuccess;
}

namespace cub {
struct DeviceRadixSort {
    template <class K, class V>
    static cudaError_t SortPairs(void* storage, size_t& bytes, const K* keys_in, K* keys_out, const V* values_in,
                                 V* values_out, int n, int, int, cudaStream_t stream) {
        if (!storage) {
            bytes = 16;
            return cudaSuccess;
        }
        ::moe::emulated::enqueue(stream, [=] { sort(keys_in, keys_out, values_in, values_out, n); });
        return cudaSuccess;
    }

  private:
    template <class K, class V>
    static void sort(const K* keys_in, K* keys_out, const V* values_in, V* values_out, int n) {
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
