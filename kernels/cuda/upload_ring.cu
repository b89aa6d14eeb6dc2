#include "kernels/cuda/upload_ring.h"

#include <cstring>

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

UploadRing::~UploadRing() {
    // Errors here cannot be reported; the copies must be done before the
    // ring is freed.
    for (const InFlight& f : in_flight_) {
        cudaEventSynchronize(f.done);
        cudaEventDestroy(f.done);
    }
    for (cudaEvent_t e : spare_events_) cudaEventDestroy(e);
    if (ring_) cudaFreeHost(ring_);
}

void UploadRing::retire_oldest() {
    MOE_CUDA_CHECK(cudaEventSynchronize(in_flight_.front().done));
    spare_events_.push_back(in_flight_.front().done);
    in_flight_.pop_front();
}

void UploadRing::copy(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    if (!bytes) return;
    if (bytes > capacity_) {
        MOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
        return;
    }
    if (!ring_) MOE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ring_), capacity_));
    // The ring fills in order, so in_flight_ holds first the copies of the
    // previous lap at or past head_, then this lap's before it. A copy's
    // bytes never wrap: the tail it does not fit in is skipped, and the
    // previous lap's copies there retired (a lap ago: done, normally).
    if (head_ + bytes > capacity_) {
        while (!in_flight_.empty() && in_flight_.front().begin >= head_) retire_oldest();
        head_ = 0;
    }
    const size_t begin = head_, end = head_ + bytes;
    // The previous lap's copies from these bytes must be done before they
    // are overwritten.
    while (!in_flight_.empty() && in_flight_.front().begin >= begin && in_flight_.front().begin < end)
        retire_oldest();
    std::memcpy(ring_ + begin, src, bytes);
    MOE_CUDA_CHECK(cudaMemcpyAsync(dst, ring_ + begin, bytes, cudaMemcpyHostToDevice, stream));
    cudaEvent_t done = nullptr;
    if (spare_events_.empty()) {
        MOE_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    } else {
        done = spare_events_.back();
        spare_events_.pop_back();
    }
    MOE_CUDA_CHECK(cudaEventRecord(done, stream));
    in_flight_.push_back({begin, end, done});
    head_ = end;
}

}  // namespace moe::cuda
