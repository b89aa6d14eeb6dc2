// The CUDA runtime and cuBLASLt entry points the backend calls, for a
// process whose kernels run on emulated blocks: one emulated GPU (an H100's
// compute capability, so the wgmma kernels run too), device memory in host
// memory (filled with 0x7f bytes, as no real allocation is zeroed either),
// copies, fills and kernels queued on their streams and done as late as
// CUDA allows (emulated_streams.h), and cuBLASLt's GEMM a loop in fp32.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "tests/emulated/emulated_cuda.h"
#include "tests/emulated/emulated_streams.h"

namespace moe::emulated {

namespace {
float element(const void* p, DType t, int64_t i) {
    return t == DType::BF16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
                            : static_cast<const float*>(p)[i];
}
}  // namespace

namespace {
void gemm_now(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, DType a_type, int64_t lda,
              const void* b, DType b_type, int64_t ldb, void* out, DType out_type, int64_t ldc, float beta,
              const void* bias) {
    for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < m; ++i) {
            float acc = 0;
            for (int64_t p = 0; p < k; ++p)
                acc += element(a, a_type, trans_a ? p + i * lda : i + p * lda) *
                       element(b, b_type, trans_b ? j + p * ldb : p + j * ldb);
            if (bias) acc += element(bias, DType::BF16, i);  // biases are working (bf16) weights
            const int64_t o = i + j * ldc;
            if (beta != 0) acc += beta * element(out, out_type, o);
            if (out_type == DType::BF16)
                static_cast<__nv_bfloat16*>(out)[o] = __float2bfloat16_rn(acc);
            else
                static_cast<float*>(out)[o] = acc;
        }
}
}  // namespace

void gemm(cudaStream_t s, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, DType a_type,
          int64_t lda, const void* b, DType b_type, int64_t ldb, void* out, DType out_type, int64_t ldc, float beta,
          const void* bias) {
    enqueue(s, [=] { gemm_now(trans_a, trans_b, m, n, k, a, a_type, lda, b, b_type, ldb, out, out_type, ldc, beta, bias); });
}

}  // namespace moe::emulated

namespace {
int handles;  // what opaque handles point at
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

// matmul.cu keeps its plans' code, which never runs here (emulate_kernels.py
// swaps CudaOps::gemm's body for emulated::gemm).
cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
    *h = reinterpret_cast<cublasLtHandle_t>(&handles);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t, cublasLtMatrixLayoutAttribute_t, const void*,
                                                size_t) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

}  // extern "C"
