// The Communicator over NCCL for GPU buffers: one NCCL communicator per group
// (its unique id broadcast over the group's MPI communicator), collectives on
// NCCL's own stream, ordered against the compute stream with events (the
// collective waits for the compute queued before it; compute queued after it
// waits for the collective). All-to-all-v is grouped ncclSend/ncclRecv.
// Host buffers (counts, losses, norms) go through the MPI communicator the
// NCCL one was built on, so one Communicator serves both.
//
// NCCL refuses two ranks on one GPU: such layouts use the MPI communicator
// (staging device buffers through host memory) instead.
//
// Failures: NCCL reports a network or peer failure only through
// ncclCommGetAsyncError while its kernels spin, so a watchdog thread polls it
// and ends the process (the launcher then stops the job) instead of leaving
// every rank waiting on its GPU. A communicator destroyed while an exception
// unwinds is aborted, not destroyed: ncclCommDestroy waits for the node's
// other ranks, which may be stuck in the collective this rank left.
#pragma once
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/communicator.h"

namespace moe {

class NcclCommunicator final : public Communicator {
public:
    // host: the MPI communicator of the same ranks (bootstrap and host
    // buffers). compute: the stream the GPU backend queues its kernels on.
    // Collective over host.
    NcclCommunicator(std::unique_ptr<Communicator> host, cudaStream_t compute);
    ~NcclCommunicator() override;
    NcclCommunicator(const NcclCommunicator&) = delete;
    NcclCommunicator& operator=(const NcclCommunicator&) = delete;

    int rank() const override { return host_->rank(); }
    int size() const override { return host_->size(); }
    void all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) override;
    // On the comm stream while the compute stream goes on, until wait_async().
    void all_reduce_async(const std::vector<ReduceBuffer>& bucket, ReduceOp op) override;
    void reduce_scatter_async(const std::vector<ReduceBuffer>& bucket, ReduceOp op) override;
    void wait_async() override { end(); }
    void reduce_scatter(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op) override;
    void all_gather(const void* send, void* recv, int64_t count, DType dtype) override;
    void broadcast(void* buf, int64_t bytes, int root) override;
    void barrier() override { host_->barrier(); }
    std::unique_ptr<Communicator> split(int color, int key) override;
    // Host collectives wait as the MPI communicator does; a collective on the
    // GPU that has not finished after `seconds` stops the job from the
    // watchdog (NCCL does not say which peer is missing).
    void set_timeout(double seconds) override;

    // The device exchanges' time on the comm stream, from the compute they
    // waited for to their end (waits for those still running), plus the host
    // exchanges' time in the MPI communicator.
    double seconds_in_all_to_all() const override;

protected:
    // Queued, not waited for: the compute queued after it waits on the GPU.
    void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                         const std::vector<int64_t>& recv_counts, DType dtype) override;

private:
    // The comm stream waits for the compute queued so far; after the
    // collective, the compute stream waits for it.
    void begin();
    void end();
    // A bucket on the comm stream as NCCL groups of at most 1024 calls, not
    // waited for (wait_async() does); false when its buffers are on the host.
    bool queue_bucket(const std::vector<ReduceBuffer>& bucket, ncclRedOp_t op, bool scatter);

    // Timing events around each device all-to-all: pending until read, then
    // added to a2a_seconds_ and reused.
    struct Timing {
        cudaEvent_t start, stop;
    };
    Timing take_timing();
    // Adds up the pending timings that finished (all of them when wait).
    void settle_timings(bool wait) const;
    // The watchdog: checks NCCL's asynchronous error every second until
    // stop, and how long the comm stream's work has been unfinished.
    void watch();

    std::unique_ptr<Communicator> host_;
    cudaStream_t compute_;
    cudaStream_t stream_ = nullptr;
    cudaEvent_t compute_done_ = nullptr, comm_done_ = nullptr;
    ncclComm_t comm_ = nullptr;
    mutable std::deque<Timing> pending_;
    mutable std::vector<Timing> idle_;
    mutable double a2a_seconds_ = 0;
    std::mutex watch_mutex_;  // guards the fields below and the recording of comm_done_
    std::condition_variable watch_wake_;
    bool watch_stop_ = false;
    double timeout_s_ = kDefaultTimeoutSeconds;
    bool busy_ = false;  // work queued on the comm stream that comm_done_ has not seen finish
    std::chrono::steady_clock::time_point busy_since_;
    std::thread watchdog_;
};

}  // namespace moe
