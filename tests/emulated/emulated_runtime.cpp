// The CUDA runtime's entry points the backend calls, for a process whose
// kernels run on emulated blocks: one emulated GPU (an H100's compute
// capability, so the wgmma kernels run too), device memory in host memory
// (filled with 0x7f bytes, as no real allocation is zeroed either), copies
// and fills queued on their streams (emulated_streams.h). cuBLASLt is
// emulated_cublaslt.cpp's.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "tests/emulated/emulated_cuda.h"
#include "tests/emulated/emulated_streams.h"

namespace {
std::map<const char*, size_t> pinned;  // cudaMallocHost's blocks

bool is_pinned(const void* p) {
    const char* c = static_cast<const char*>(p);
    auto it = pinned.upper_bound(c);
    return it != pinned.begin() && c < (--it)->first + it->second;
}
}  // namespace

extern "C" {

cudaError_t cudaMalloc(void** p, size_t bytes) {
    *p = std::aligned_alloc(256, (bytes + 511) / 256 * 256);
    if (!*p) return cudaErrorMemoryAllocation;
    std::memset(*p, 0x7f, bytes);
    return cudaSuccess;
}
// Frees wait for the whole device, as CUDA's do.
cudaError_t cudaFree(void* p) {
    moe::emulated::finish_all();
    std::free(p);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
    const cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess) pinned[static_cast<const char*>(*p)] = bytes;
    return e;
}
cudaError_t cudaFreeHost(void* p) {
    moe::emulated::finish_all();
    pinned.erase(static_cast<const char*>(p));
    std::free(p);
    return cudaSuccess;
}
// A copy from pageable host memory takes its bytes at the call; one to
// pageable host memory is done when the call returns; the rest are queued.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    if (kind == cudaMemcpyHostToDevice && !is_pinned(src)) {
        auto staged = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                          static_cast<const char*>(src) + bytes);
        moe::emulated::enqueue(s, [=] { std::memcpy(dst, staged->data(), bytes); });
    } else {
        moe::emulated::enqueue(s, [=] { std::memmove(dst, src, bytes); });
    }
    if (kind == cudaMemcpyDeviceToHost && !is_pinned(dst)) moe::emulated::finish_stream(s);
    return cudaSuccess;
}
// On the legacy default stream, and done when it returns.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
    moe::emulated::finish_stream(nullptr);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
    moe::emulated::enqueue(s, [=] { std::memset(p, value, bytes); });
    return cudaSuccess;
}
cudaError_t cudaMemset2DAsync(void* p, size_t pitch, int value, size_t width, size_t height, cudaStream_t s) {
    moe::emulated::enqueue(s, [=] {
        for (size_t r = 0; r < height; ++r) std::memset(static_cast<char*>(p) + r * pitch, value, width);
    });
    return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "an emulated CUDA error"; }
const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
cudaError_t cudaGetDeviceCount(int* n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties_v2(cudaDeviceProp* prop, int) {
    std::memset(prop, 0, sizeof *prop);
    std::snprintf(prop->name, sizeof prop->name, "emulated GPU (compute 9.0)");
    prop->major = 9;
    prop->minor = 0;
    prop->totalGlobalMem = size_t(80) << 30;
    prop->multiProcessorCount = 132;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) { return cudaGetDeviceProperties_v2(prop, device); }
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
    *total = size_t(80) << 30;
    *free_bytes = size_t(70) << 30;
    return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
    if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize)
        moe::emulated::dynamic_shared_limit[kernel] = value;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetPCIBusId(char* id, int length, int) {
    std::snprintf(id, size_t(length), "0000:00:00.0");
    return cudaSuccess;
}

}  // extern "C"
