#include "comm/device_staging.h"

#include <stdexcept>
#include <string>

#if MOE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace moe {

#if MOE_HAVE_CUDA
namespace {
void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess)
        throw std::runtime_error(std::string("staging device buffers for MPI: ") + what + ": " +
                                 cudaGetErrorString(err));
}
}  // namespace

DeviceStaging::~DeviceStaging() {
    for (void* p : pinned_)
        if (p) cudaFreeHost(p);
}

bool DeviceStaging::is_device(const void* p) {
    if (!p) return false;
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        cudaGetLastError();  // no driver or an unknown pointer: host memory
        return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

void* DeviceStaging::to_host(int slot, const void* p, size_t bytes, bool copy_in) {
    if (bytes == 0 || !is_device(p)) return const_cast<void*>(p);
    if (capacity_[slot] < bytes) {
        if (pinned_[slot]) check(cudaFreeHost(pinned_[slot]), "cudaFreeHost");
        pinned_[slot] = nullptr;
        capacity_[slot] = 0;
        check(cudaMallocHost(&pinned_[slot], bytes), "cudaMallocHost");
        capacity_[slot] = bytes;
    }
    // The compute runs on its own non-blocking stream, which these
    // default-stream copies do not wait for: finish everything queued before
    // p is read here or, receive-only too, overwritten by to_device().
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    if (copy_in) check(cudaMemcpy(pinned_[slot], p, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
    return pinned_[slot];
}

void DeviceStaging::to_device(void* p, const void* host, size_t bytes) {
    if (bytes == 0 || host == p) return;
    check(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}
#else
DeviceStaging::~DeviceStaging() = default;
bool DeviceStaging::is_device(const void*) { return false; }
void* DeviceStaging::to_host(int, const void* p, size_t, bool) { return const_cast<void*>(p); }
void DeviceStaging::to_device(void*, const void*, size_t) {}
#endif

}  // namespace moe
