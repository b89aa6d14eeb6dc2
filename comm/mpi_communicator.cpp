#include "comm/mpi_communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "comm/mpi_runtime.h"

namespace moe {

namespace {

MPI_Datatype mpi_type(DType dtype) {
    switch (dtype) {
        case DType::F32: return MPI_FLOAT;
        case DType::F64: return MPI_DOUBLE;
        case DType::I32: return MPI_INT32_T;
        case DType::BF16: return MPI_UINT16_T;  // moved as opaque bits
    }
    throw CommError("unknown dtype");
}

MPI_Datatype reducible_type(DType dtype, const char* collective) {
    if (dtype == DType::BF16)
        throw CommError(std::string(collective) +
                        ": MPI cannot reduce BF16 host buffers; reduce an F32 copy (the device backend reduces BF16)");
    return mpi_type(dtype);
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX; }

// Whether [a, a + a_bytes) and [b, b + b_bytes) share memory: an in-place
// call, which MPI's buffers may not be; it goes through a copy of its input.
bool overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
    const char *pa = static_cast<const char*>(a), *pb = static_cast<const char*>(b);
    return pa < pb + b_bytes && pb < pa + a_bytes;
}

// Element `index` of a buffer of `elem_size`-byte elements.
char* at(void* buf, int64_t index, size_t elem_size) { return static_cast<char*>(buf) + size_t(index) * elem_size; }
const char* at(const void* buf, int64_t index, size_t elem_size) {
    return static_cast<const char*>(buf) + size_t(index) * elem_size;
}

// Calls f(offset, n) for consecutive pieces of [0, count) of at most max_count
// elements; once with n = 0 when count is 0 (an empty MPI call is valid and
// keeps every rank's sequence of calls the same).
template <class F> void for_each_chunk(int64_t count, int64_t max_count, F f) {
    int64_t offset = 0;
    do {
        const int64_t n = std::min(max_count, count - offset);
        f(offset, int(n));
        offset += n;
    } while (offset < count);
}

}  // namespace

std::unique_ptr<MpiCommunicator> MpiCommunicator::world(int64_t max_count) {
    if (!mpi_running()) throw CommError("MPI is not running; create a moe::MpiRuntime at the start of main");
    MPI_Comm comm;
    mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
    return std::make_unique<MpiCommunicator>(comm, max_count);
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, int64_t max_count, double timeout_s)
    : comm_(comm), max_count_(max_count), timeout_s_(timeout_s) {
    if (max_count < 1 || max_count > kMaxMpiCount)
        throw CommError("MpiCommunicator: max_count " + std::to_string(max_count) + " is outside [1, INT_MAX]");
    mpi_check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
    mpi_check(MPI_Comm_dup(comm_, &watch_), "MPI_Comm_dup");
    // World ranks, to name a peer the way the launcher and the logs do.
    MPI_Group group, world;
    mpi_check(MPI_Comm_group(comm_, &group), "MPI_Comm_group");
    mpi_check(MPI_Comm_group(MPI_COMM_WORLD, &world), "MPI_Comm_group");
    std::vector<int> mine(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) mine[size_t(r)] = r;
    world_ranks_.resize(size_t(size_));
    mpi_check(MPI_Group_translate_ranks(group, size_, mine.data(), world, world_ranks_.data()),
              "MPI_Group_translate_ranks");
    MPI_Group_free(&group);
    MPI_Group_free(&world);
}

MpiCommunicator::~MpiCommunicator() {
    if (!mpi_running()) return;
    MPI_Comm_free(&watch_);
    MPI_Comm_free(&comm_);
}

std::string MpiCommunicator::describe_rank(int r) const {
    return "rank " + std::to_string(r) + " (world rank " + std::to_string(world_ranks_[size_t(r)]) + ")";
}

void MpiCommunicator::wait(MPI_Request request, const char* what) {
    std::vector<MPI_Request> one = {request};
    wait(one, what);
}

// Polls rather than blocks, so that a peer that never comes is noticed: the
// clock is read now and then; after a second of waiting the loop also sleeps
// a little, freeing the core for a rank that waits long (a checkpoint).
void MpiCommunicator::wait(std::vector<MPI_Request>& requests, const char* what) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    for (long spin = 0;; ++spin) {
        int done = 0;
        mpi_check(MPI_Testall(int(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), what);
        if (done) return;
        if (spin % 1024 != 0) continue;
        const double waited = std::chrono::duration<double>(Clock::now() - start).count();
        if (waited > 1) std::this_thread::sleep_for(std::chrono::microseconds(200));
        if (timeout_s_ <= 0 || waited < timeout_s_) continue;
        const std::vector<int> missing = peers_missing(std::clamp(timeout_s_ / 10, 5.0, 60.0));
        std::string who;
        for (int r : missing) who += (who.empty() ? "" : ", ") + describe_rank(r);
        char waited_text[32];
        std::snprintf(waited_text, sizeof waited_text, "%.0f", waited);
        if (missing.empty())
            throw CommError(std::string(what) + " has not completed in " + waited_text + " s although every rank of "
                            "its group of " + std::to_string(size_) + " waits: the ranks called different "
                            "collectives; the job stops");
        throw CommError(std::string(what) + " waited " + waited_text + " s for " + who + " of a group of " +
                        std::to_string(size_) + " ranks: it stopped taking part (stopped, hung, or far slower than "
                        "the others); the job stops (parallel.collective_timeout_s sets the wait)");
    }
}

// Every rank that times out tells each peer it waits, and listens for theirs:
// the peers not heard from within `grace` are the ones that stopped. (A peer
// stuck in another collective times out too, and is heard.)
std::vector<int> MpiCommunicator::peers_missing(double grace) {
    constexpr int kTag = 1;
    const int32_t waiting = 1;
    std::vector<int32_t> heard(size_t(size_), 0);
    std::vector<MPI_Request> recvs(size_t(size_), MPI_REQUEST_NULL), sends;
    for (int p = 0; p < size_; ++p) {
        if (p == rank_) continue;
        mpi_check(MPI_Irecv(&heard[size_t(p)], 1, MPI_INT32_T, p, kTag, watch_, &recvs[size_t(p)]), "MPI_Irecv");
        sends.emplace_back();
        mpi_check(MPI_Isend(&waiting, 1, MPI_INT32_T, p, kTag, watch_, &sends.back()), "MPI_Isend");
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace);
    std::vector<int> missing;
    do {
        missing.clear();
        for (int p = 0; p < size_; ++p) {
            int arrived = 1;
            if (recvs[size_t(p)] != MPI_REQUEST_NULL) mpi_check(MPI_Test(&recvs[size_t(p)], &arrived, MPI_STATUS_IGNORE), "MPI_Test");
            if (!arrived) missing.push_back(p);
        }
        if (!missing.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (!missing.empty() && std::chrono::steady_clock::now() < deadline);
    return missing;  // the requests are left: the job stops
}

void MpiCommunicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
    const MPI_Datatype type = reducible_type(dtype, "all_reduce");
    const size_t elem = dtype_size(dtype);
    void* host = staging_.to_host(0, buf, size_t(count) * elem, true);
    for_each_chunk(count, max_count_, [&](int64_t offset, int n) {
        MPI_Request r;
        mpi_check(MPI_Iallreduce(MPI_IN_PLACE, at(host, offset, elem), n, type, mpi_op(op), comm_, &r),
                  "MPI_Iallreduce");
        wait(r, "MPI all_reduce");
    });
    staging_.to_device(buf, host, size_t(count) * elem);
}

// A block longer than one MPI call goes piece by piece: the same piece of
// every rank's block is packed side by side in a staging buffer.
void MpiCommunicator::reduce_scatter(const void* send_buf, void* recv_buf, int64_t count, DType dtype,
                                     ReduceOp op) {
    const MPI_Datatype type = reducible_type(dtype, "reduce_scatter");
    const size_t elem = dtype_size(dtype);
    const void* send = staging_.to_host(0, send_buf, size_t(size_) * size_t(count) * elem, true);
    void* recv = staging_.to_host(1, recv_buf, size_t(count) * elem, false);
    std::vector<char> staging, input;
    if (overlap(send, size_t(size_) * size_t(count) * elem, recv, size_t(count) * elem)) {
        input.assign(static_cast<const char*>(send), static_cast<const char*>(send) + size_t(size_) * count * elem);
        send = input.data();
    }
    for_each_chunk(count, max_count_, [&](int64_t offset, int n) {
        const void* pieces = send;
        if (n != count) {
            staging.resize(size_t(size_) * size_t(n) * elem);
            for (int r = 0; r < size_; ++r)
                std::memcpy(at(staging.data(), int64_t(r) * n, elem), at(send, r * count + offset, elem), n * elem);
            pieces = staging.data();
        }
        MPI_Request r;
        mpi_check(MPI_Ireduce_scatter_block(pieces, at(recv, offset, elem), n, type, mpi_op(op), comm_, &r),
                  "MPI_Ireduce_scatter_block");
        wait(r, "MPI reduce_scatter");
    });
    staging_.to_device(recv_buf, recv, size_t(count) * elem);
}

void MpiCommunicator::all_gather(const void* send_buf, void* recv_buf, int64_t count, DType dtype) {
    const MPI_Datatype type = mpi_type(dtype);
    const size_t elem = dtype_size(dtype);
    const void* send = staging_.to_host(0, send_buf, size_t(count) * elem, true);
    void* recv = staging_.to_host(1, recv_buf, size_t(size_) * size_t(count) * elem, false);
    std::vector<char> staging, input;
    if (overlap(send, size_t(count) * elem, recv, size_t(size_) * size_t(count) * elem)) {
        input.assign(static_cast<const char*>(send), static_cast<const char*>(send) + size_t(count) * elem);
        send = input.data();
    }
    for_each_chunk(count, max_count_, [&](int64_t offset, int n) {
        MPI_Request r;
        if (n == count) {
            mpi_check(MPI_Iallgather(send, n, type, recv, n, type, comm_, &r), "MPI_Iallgather");
            wait(r, "MPI all_gather");
            return;
        }
        staging.resize(size_t(size_) * size_t(n) * elem);
        mpi_check(MPI_Iallgather(at(send, offset, elem), n, type, staging.data(), n, type, comm_, &r),
                  "MPI_Iallgather");
        wait(r, "MPI all_gather");
        for (int r = 0; r < size_; ++r)
            std::memcpy(at(recv, r * count + offset, elem), at(staging.data(), int64_t(r) * n, elem), n * elem);
    });
    staging_.to_device(recv_buf, recv, size_t(size_) * size_t(count) * elem);
}

void MpiCommunicator::broadcast(void* buf, int64_t bytes, int root) {
    void* host = staging_.to_host(0, buf, size_t(bytes), rank_ == root);
    for_each_chunk(bytes, max_count_, [&](int64_t offset, int n) {
        MPI_Request r;
        mpi_check(MPI_Ibcast(at(host, offset, 1), n, MPI_BYTE, root, comm_, &r), "MPI_Ibcast");
        wait(r, "MPI broadcast");
    });
    staging_.to_device(buf, host, size_t(bytes));
}

void MpiCommunicator::barrier() {
    MPI_Request r;
    mpi_check(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier");
    wait(r, "MPI barrier");
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
    if (color < 0) throw CommError("split: color " + std::to_string(color) + " must be >= 0");
    MPI_Comm comm;
    mpi_check(MPI_Comm_split(comm_, color, key, &comm), "MPI_Comm_split");
    return std::make_unique<MpiCommunicator>(comm, max_count_, timeout_s_);
}

// Counts are checked before any data moves: every rank learns what its peers
// will send (one small all-to-all), and if any rank's recv_counts disagree,
// every rank throws. Detecting it from the transfers instead (a truncated
// receive) leaves Open MPI's pending requests behind and hangs the job.
void MpiCommunicator::check_counts_match(const std::vector<int64_t>& send_counts,
                                         const std::vector<int64_t>& recv_counts) {
    std::vector<int64_t> peers_send(size_t(size_), 0);
    MPI_Request r;
    mpi_check(MPI_Ialltoall(send_counts.data(), 1, MPI_INT64_T, peers_send.data(), 1, MPI_INT64_T, comm_, &r),
              "MPI_Ialltoall");
    wait(r, "MPI all_to_all_v (counts)");
    int first_bad_peer = -1;
    for (int p = 0; p < size_ && first_bad_peer < 0; ++p)
        if (peers_send[size_t(p)] != recv_counts[size_t(p)]) first_bad_peer = p;
    int first_bad_rank = first_bad_peer >= 0 ? rank_ : size_;
    mpi_check(MPI_Iallreduce(MPI_IN_PLACE, &first_bad_rank, 1, MPI_INT, MPI_MIN, comm_, &r), "MPI_Iallreduce");
    wait(r, "MPI all_to_all_v (counts)");
    if (first_bad_peer >= 0) {
        const size_t p = size_t(first_bad_peer);
        throw CommError("all_to_all_v: rank " + std::to_string(rank_) + " expected recv_counts[" + std::to_string(p) +
                        "] = " + std::to_string(recv_counts[p]) + " elements from rank " + std::to_string(p) +
                        " but it sends " + std::to_string(peers_send[p]) +
                        "; recv_counts[p] must equal rank p's send_counts[" + std::to_string(rank_) + "]");
    }
    if (first_bad_rank < size_)
        throw CommError("all_to_all_v: rank " + std::to_string(first_bad_rank) +
                        " expected other counts than its peers send (its own error says which)");
}

void MpiCommunicator::do_all_to_all_v(const void* send_buf, const std::vector<int64_t>& send_counts, void* recv_buf,
                                      const std::vector<int64_t>& recv_counts, DType dtype) {
    check_counts_match(send_counts, recv_counts);
    const MPI_Datatype type = mpi_type(dtype);
    const size_t elem = dtype_size(dtype);
    std::vector<int64_t> send_offsets(size_t(size_) + 1, 0), recv_offsets(size_t(size_) + 1, 0);
    for (size_t p = 0; p < size_t(size_); ++p) {
        send_offsets[p + 1] = send_offsets[p] + send_counts[p];
        recv_offsets[p + 1] = recv_offsets[p] + recv_counts[p];
    }
    const size_t send_bytes = size_t(send_offsets.back()) * elem, recv_bytes = size_t(recv_offsets.back()) * elem;
    const void* send = staging_.to_host(0, send_buf, send_bytes, true);
    void* recv = staging_.to_host(1, recv_buf, recv_bytes, false);

    // Receives first, then sends; messages from one peer match in posting order.
    std::vector<MPI_Request> requests;
    for (int p = 0; p < size_; ++p) {
        if (p == rank_ || recv_counts[size_t(p)] == 0) continue;
        for_each_chunk(recv_counts[size_t(p)], max_count_, [&](int64_t offset, int n) {
            requests.emplace_back();
            mpi_check(MPI_Irecv(at(recv, recv_offsets[size_t(p)] + offset, elem), n, type, p, 0, comm_,
                                &requests.back()),
                      "MPI_Irecv");
        });
    }
    for (int p = 0; p < size_; ++p) {
        if (p == rank_ || send_counts[size_t(p)] == 0) continue;
        for_each_chunk(send_counts[size_t(p)], max_count_, [&](int64_t offset, int n) {
            requests.emplace_back();
            mpi_check(MPI_Isend(at(send, send_offsets[size_t(p)] + offset, elem), n, type, p, 0, comm_,
                                &requests.back()),
                      "MPI_Isend");
        });
    }
    // The copy to itself overlaps the transfers.
    const size_t me = size_t(rank_);
    if (recv_counts[me] > 0)
        std::memcpy(at(recv, recv_offsets[me], elem), at(send, send_offsets[me], elem), size_t(recv_counts[me]) * elem);
    wait(requests, "MPI all_to_all_v");
    staging_.to_device(recv_buf, recv, recv_bytes);
}

}  // namespace moe
