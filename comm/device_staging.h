// Device buffers through host memory, for a transport that takes host memory
// only (MPI built without CUDA support, or on purpose: NCCL refuses two ranks
// on one GPU, so one-GPU multi-rank tests go this way). A device buffer is
// copied into pinned host memory before the call and back after it; a host
// buffer passes through untouched. Without the CUDA backend every buffer is a
// host buffer.
#pragma once
#include <cstddef>

namespace moe {

class DeviceStaging {
public:
    static constexpr int kSlots = 2;  // a call's send and receive buffers

    DeviceStaging() = default;
    ~DeviceStaging();
    DeviceStaging(const DeviceStaging&) = delete;
    DeviceStaging& operator=(const DeviceStaging&) = delete;

    // Whether p points into GPU memory.
    static bool is_device(const void* p);
    // A host pointer for `bytes` of p: p itself when it is host memory, else
    // the pinned buffer of `slot`, filled from p when copy_in. A device p
    // waits for all queued GPU work first, so p holds what the compute wrote
    // and no queued work still uses it when to_device() writes it.
    void* to_host(int slot, const void* p, size_t bytes, bool copy_in);
    // Copies host back into p when to_host() staged it.
    void to_device(void* p, const void* host, size_t bytes);

private:
    void* pinned_[kSlots] = {nullptr, nullptr};
    size_t capacity_[kSlots] = {0, 0};
};

}  // namespace moe
