// Host -> device copies that never make the host wait for the GPU. From
// pageable memory cudaMemcpyAsync may synchronize with the stream (the CUDA
// runtime's "API synchronization behavior"), which in the middle of a step
// drains the GPU's queue. Here the source is first copied into a pinned ring
// buffer and the DMA queued from there: the caller may reuse its source at
// once, and the host waits only when it is about to overwrite a region whose
// copy the GPU has not yet done (an event per copy), a ring's length behind.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <deque>
#include <vector>

namespace moe::cuda {

class UploadRing {
public:
    // capacity: bytes of pinned memory, allocated on the first copy.
    explicit UploadRing(size_t capacity) : capacity_(capacity) {}
    ~UploadRing();
    UploadRing(const UploadRing&) = delete;
    UploadRing& operator=(const UploadRing&) = delete;

    // dst (device) = src (host, bytes), queued on stream. A copy larger than
    // the ring goes straight from src (such copies load weights, not steps).
    void copy(void* dst, const void* src, size_t bytes, cudaStream_t stream);

private:
    void retire_oldest();  // waits for the oldest copy in flight

    struct InFlight {
        size_t begin, end;  // the ring's bytes [begin, end) the copy reads
        cudaEvent_t done;   // recorded after the copy
    };
    size_t capacity_;
    char* ring_ = nullptr;
    size_t head_ = 0;  // where the next copy's bytes go
    std::deque<InFlight> in_flight_;
    std::vector<cudaEvent_t> spare_events_;
};

}  // namespace moe::cuda
