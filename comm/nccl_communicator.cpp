#include "comm/nccl_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "comm/device_staging.h"

namespace moe {

namespace {

void check_nccl(ncclResult_t r, const char* what) {
    if (r != ncclSuccess)
        throw CommError(std::string("NCCL: ") + what + " failed: " + ncclGetErrorString(r) +
                        " (NCCL_DEBUG=INFO says more; parallel.comm=mpi avoids NCCL)");
}

void check_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw CommError(std::string("NCCL communicator: ") + what + ": " + cudaGetErrorString(e));
}

ncclDataType_t nccl_type(DType t) {
    switch (t) {
        case DType::F32: return ncclFloat32;
        case DType::F64: return ncclFloat64;
        case DType::BF16: return ncclBfloat16;
        case DType::I32: return ncclInt32;
    }
    throw CommError("NCCL: unknown dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Sum ? ncclSum : ncclMax; }

// Both buffers of a call on the device, or both on the host.
bool on_device(const void* a, const void* b = nullptr) {
    const bool da = DeviceStaging::is_device(a);
    if (b && DeviceStaging::is_device(b) != da)
        throw CommError("NCCL communicator: a call mixes a host and a device buffer");
    return da;
}

}  // namespace

NcclCommunicator::NcclCommunicator(std::unique_ptr<Communicator> host, cudaStream_t compute)
    : host_(std::move(host)), compute_(compute) {
    // The world, EP and expert-DP communicators run on streams of their own,
    // so a GPU may hold kernels of several at once; NCCL can deadlock unless
    // their launches follow one order on every GPU. Every rank issues them in
    // the same program order, and this makes NCCL launch them in that order
    // (NCCL >= 2.26, CUDA >= 12.3; read at NCCL's first use; a user's own
    // setting wins).
    setenv("NCCL_LAUNCH_ORDER_IMPLICIT", "1", /*overwrite=*/0);
    ncclUniqueId id{};
    if (host_->rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host_->broadcast(&id, sizeof id, 0);
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventCreateWithFlags(&comm_done_, cudaEventDisableTiming), "cudaEventCreate");
    check_nccl(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()), "ncclCommInitRank");
    watchdog_ = std::thread([this] { watch(); });
}

NcclCommunicator::~NcclCommunicator() {
    {
        std::lock_guard<std::mutex> lock(watch_mutex_);
        watch_stop_ = true;
    }
    watch_wake_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    const bool failing = std::uncaught_exceptions() > 0;  // the peers may never join a collective destroy
    if (failing && comm_) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
    }
    if (stream_) cudaStreamSynchronize(stream_);
    for (const Timing& t : pending_) idle_.push_back(t);
    for (const Timing& t : idle_) {
        cudaEventDestroy(t.start);
        cudaEventDestroy(t.stop);
    }
    if (comm_) ncclCommDestroy(comm_);
    if (comm_done_) cudaEventDestroy(comm_done_);
    if (compute_done_) cudaEventDestroy(compute_done_);
    if (stream_) cudaStreamDestroy(stream_);
}

void NcclCommunicator::set_timeout(double seconds) {
    host_->set_timeout(seconds);
    std::lock_guard<std::mutex> lock(watch_mutex_);
    timeout_s_ = seconds;
}

void NcclCommunicator::watch() {
    std::unique_lock<std::mutex> lock(watch_mutex_);
    while (!watch_wake_.wait_for(lock, std::chrono::seconds(1), [this] { return watch_stop_; })) {
        if (busy_ && cudaEventQuery(comm_done_) == cudaSuccess) busy_ = false;
        const double busy_s =
            busy_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - busy_since_).count() : 0;
        if (timeout_s_ > 0 && busy_s > timeout_s_) {
            std::fprintf(stderr,
                         "rank %d: a collective of an NCCL group of %d ranks has not finished in %.0f s: a peer "
                         "stopped taking part (stopped, hung, or far slower than the others); stopping the job "
                         "(parallel.collective_timeout_s sets the wait)\n",
                         rank(), size(), busy_s);
            std::fflush(nullptr);
            std::_Exit(1);
        }
        ncclResult_t state = ncclSuccess;
        const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
        if (r == ncclSuccess && (state == ncclSuccess || state == ncclInProgress)) continue;
        // Only the main thread may call MPI; ending this process makes mpirun
        // or srun stop the others.
        std::fprintf(stderr,
                     "NCCL failed in a group of %d ranks (this process is its rank %d): %s (NCCL_DEBUG=INFO says "
                     "more); stopping the job\n",
                     size(), rank(), ncclGetErrorString(r != ncclSuccess ? r : state));
        std::fflush(nullptr);
        std::_Exit(1);
    }
}

void NcclCommunicator::begin() {
    check_cuda(cudaEventRecord(compute_done_, compute_), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, compute_done_, 0), "cudaStreamWaitEvent");
}

void NcclCommunicator::end() {
    {
        std::lock_guard<std::mutex> lock(watch_mutex_);
        check_cuda(cudaEventRecord(comm_done_, stream_), "cudaEventRecord");
        if (!busy_) busy_since_ = std::chrono::steady_clock::now();
        busy_ = true;
    }
    check_cuda(cudaStreamWaitEvent(compute_, comm_done_, 0), "cudaStreamWaitEvent");
}

void NcclCommunicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
    if (!on_device(buf)) return host_->all_reduce(buf, count, dtype, op);
    begin();
    check_nccl(ncclAllReduce(buf, buf, size_t(count), nccl_type(dtype), nccl_op(op), comm_, stream_), "ncclAllReduce");
    end();
}

// One group: NCCL launches the bucket's reductions together, and the comm
// stream waits for the compute once for all of them.
bool NcclCommunicator::queue_bucket(const std::vector<ReduceBuffer>& bucket, ncclRedOp_t op, bool scatter) {
    const bool device = on_device(bucket.front().data);
    for (const ReduceBuffer& b : bucket)
        if (on_device(b.data) != device) throw CommError("NCCL communicator: a bucket mixes host and device buffers");
    if (!device) return false;
    begin();
    // NCCL's documentation has capped a group at 2048 operations.
    const size_t kMaxGroupOps = 1024;
    for (size_t first = 0; first < bucket.size(); first += kMaxGroupOps) {
        check_nccl(ncclGroupStart(), "ncclGroupStart");
        for (size_t i = first; i < std::min(bucket.size(), first + kMaxGroupOps); ++i) {
            const ReduceBuffer& b = bucket[i];
            if (!scatter) {
                check_nccl(ncclAllReduce(b.data, b.data, size_t(b.count), nccl_type(b.dtype), op, comm_, stream_),
                           "ncclAllReduce");
                continue;
            }
            const size_t block = size_t(b.count) / size_t(size());
            char* own = static_cast<char*>(b.data) + size_t(rank()) * block * dtype_size(b.dtype);
            check_nccl(ncclReduceScatter(b.data, own, block, nccl_type(b.dtype), op, comm_, stream_),
                       "ncclReduceScatter");
        }
        check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    }
    return true;
}

void NcclCommunicator::all_reduce_async(const std::vector<ReduceBuffer>& bucket, ReduceOp op) {
    if (bucket.empty() || queue_bucket(bucket, nccl_op(op), false)) return;
    for (const ReduceBuffer& b : bucket) host_->all_reduce(b.data, b.count, b.dtype, op);
}

void NcclCommunicator::reduce_scatter_async(const std::vector<ReduceBuffer>& bucket, ReduceOp op) {
    if (bucket.empty() || queue_bucket(bucket, nccl_op(op), true)) return;
    host_->reduce_scatter_async(bucket, op);
}

void NcclCommunicator::reduce_scatter(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op) {
    if (!on_device(send, recv)) return host_->reduce_scatter(send, recv, count, dtype, op);
    begin();
    check_nccl(ncclReduceScatter(send, recv, size_t(count), nccl_type(dtype), nccl_op(op), comm_, stream_),
               "ncclReduceScatter");
    end();
}

void NcclCommunicator::all_gather(const void* send, void* recv, int64_t count, DType dtype) {
    if (!on_device(send, recv)) return host_->all_gather(send, recv, count, dtype);
    begin();
    check_nccl(ncclAllGather(send, recv, size_t(count), nccl_type(dtype), comm_, stream_), "ncclAllGather");
    end();
}

void NcclCommunicator::broadcast(void* buf, int64_t bytes, int root) {
    if (!on_device(buf)) return host_->broadcast(buf, bytes, root);
    begin();
    check_nccl(ncclBroadcast(buf, buf, size_t(bytes), ncclUint8, root, comm_, stream_), "ncclBroadcast");
    end();
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
    auto group = std::make_unique<NcclCommunicator>(host_->split(color, key), compute_);
    group->set_timeout(timeout_s_);
    return group;
}

void NcclCommunicator::do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                                       const std::vector<int64_t>& recv_counts, DType dtype) {
    if (!on_device(send, recv)) return host_->all_to_all_v(send, send_counts, recv, recv_counts, dtype);
    const size_t elem = dtype_size(dtype);
    const ncclDataType_t type = nccl_type(dtype);
    begin();
    const Timing timing = take_timing();
    check_cuda(cudaEventRecord(timing.start, stream_), "cudaEventRecord");
    size_t send_off = 0, recv_off = 0;
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < size(); ++p) {
        const size_t s = size_t(send_counts[size_t(p)]), r = size_t(recv_counts[size_t(p)]);
        if (s) check_nccl(ncclSend(static_cast<const char*>(send) + send_off * elem, s, type, p, comm_, stream_), "ncclSend");
        if (r) check_nccl(ncclRecv(static_cast<char*>(recv) + recv_off * elem, r, type, p, comm_, stream_), "ncclRecv");
        send_off += s;
        recv_off += r;
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    check_cuda(cudaEventRecord(timing.stop, stream_), "cudaEventRecord");
    pending_.push_back(timing);
    end();
}

NcclCommunicator::Timing NcclCommunicator::take_timing() {
    settle_timings(false);
    if (!idle_.empty()) {
        const Timing t = idle_.back();
        idle_.pop_back();
        return t;
    }
    Timing t{};
    check_cuda(cudaEventCreate(&t.start), "cudaEventCreate");
    check_cuda(cudaEventCreate(&t.stop), "cudaEventCreate");
    return t;
}

void NcclCommunicator::settle_timings(bool wait) const {
    while (!pending_.empty()) {
        const Timing t = pending_.front();
        if (wait) {
            check_cuda(cudaEventSynchronize(t.stop), "cudaEventSynchronize");
        } else {
            const cudaError_t state = cudaEventQuery(t.stop);
            if (state == cudaErrorNotReady) return;
            check_cuda(state, "cudaEventQuery");
        }
        float ms = 0;
        check_cuda(cudaEventElapsedTime(&ms, t.start, t.stop), "cudaEventElapsedTime");
        a2a_seconds_ += 1e-3 * ms;
        pending_.pop_front();
        idle_.push_back(t);
    }
}

double NcclCommunicator::seconds_in_all_to_all() const {
    settle_timings(true);
    return a2a_seconds_ + host_->seconds_in_all_to_all();
}

}  // namespace moe
