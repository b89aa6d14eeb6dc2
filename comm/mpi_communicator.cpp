#include "comm/mpi_communicator.h"

#include <algorithm>
#include <cstring>
#include <string>

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

MpiCommunicator::MpiCommunicator(MPI_Comm comm, int64_t max_count) : comm_(comm), max_count_(max_count) {
    if (max_count < 1 || max_count > kMaxMpiCount)
        throw CommError("MpiCommunicator: max_count " + std::to_string(max_count) + " is outside [1, INT_MAX]");
    mpi_check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    mpi_check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

MpiCommunicator::~MpiCommunicator() {
    if (mpi_running()) MPI_Comm_free(&comm_);
}

void MpiCommunicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
    const MPI_Datatype type = reducible_type(dtype, "all_reduce");
    const size_t elem = dtype_size(dtype);
    void* host = staging_.to_host(0, buf, size_t(count) * elem, true);
    for_each_chunk(count, max_count_, [&](int64_t offset, int n) {
        mpi_check(MPI_Allreduce(MPI_IN_PLACE, at(host, offset, elem), n, type, mpi_op(op), comm_), "MPI_Allreduce");
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
    std::vector<char> staging;
    for_each_chunk(count, max_count_, [&](int64_t offset, int n) {
        const void* pieces = send;
        if (n != count) {
            staging.resize(size_t(size_) * size_t(n) * elem);
            for (int r = 0; r < size_; ++r)
                std::memcpy(at(staging.data(), int64_t(r) * n, elem), at(send, r * count + offset, elem), n * elem);
            pieces = staging.data();
        }
        mpi_check(MPI_Reduce_scatter_block(pieces, at(recv, offset, elem), n, type, mpi_op(op), comm_),
                  "MPI_Reduce_scatter_block");
    });
    staging_.to_device(recv_buf, recv, size_t(count) * elem);
}

void MpiCommunicator::all_gather(const void* send_buf, void* recv_buf, int64_t count, DType dtype) {
    const MPI_Datatype type = mpi_type(dtype);
    const size_t elem = dtype_size(dtype);
    const void* send = staging_.to_host(0, send_buf, size_t(count) * elem, true);
    void* recv = staging_.to_host(1, recv_buf, size_t(size_) * size_t(count) * elem, false);
    std::vector<char> staging;
    for_each_chunk(count, max_count_, [&](int64_t offset, int n) {
        if (n == count) {
            mpi_check(MPI_Allgather(send, n, type, recv, n, type, comm_), "MPI_Allgather");
            return;
        }
        staging.resize(size_t(size_) * size_t(n) * elem);
        mpi_check(MPI_Allgather(at(send, offset, elem), n, type, staging.data(), n, type, comm_), "MPI_Allgather");
        for (int r = 0; r < size_; ++r)
            std::memcpy(at(recv, r * count + offset, elem), at(staging.data(), int64_t(r) * n, elem), n * elem);
    });
    staging_.to_device(recv_buf, recv, size_t(size_) * size_t(count) * elem);
}

void MpiCommunicator::broadcast(void* buf, int64_t bytes, int root) {
    void* host = staging_.to_host(0, buf, size_t(bytes), rank_ == root);
    for_each_chunk(bytes, max_count_, [&](int64_t offset, int n) {
        mpi_check(MPI_Bcast(at(host, offset, 1), n, MPI_BYTE, root, comm_), "MPI_Bcast");
    });
    staging_.to_device(buf, host, size_t(bytes));
}

void MpiCommunicator::barrier() { mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
    if (color < 0) throw CommError("split: color " + std::to_string(color) + " must be >= 0");
    MPI_Comm comm;
    mpi_check(MPI_Comm_split(comm_, color, key, &comm), "MPI_Comm_split");
    return std::make_unique<MpiCommunicator>(comm, max_count_);
}

// Counts are checked before any data moves: every rank learns what its peers
// will send (one small all-to-all), and if any rank's recv_counts disagree,
// every rank throws. Detecting it from the transfers instead (a truncated
// receive) leaves Open MPI's pending requests behind and hangs the job.
void MpiCommunicator::check_counts_match(const std::vector<int64_t>& send_counts,
                                         const std::vector<int64_t>& recv_counts) {
    std::vector<int64_t> peers_send(size_t(size_), 0);
    mpi_check(MPI_Alltoall(send_counts.data(), 1, MPI_INT64_T, peers_send.data(), 1, MPI_INT64_T, comm_),
              "MPI_Alltoall");
    int first_bad_peer = -1;
    for (int p = 0; p < size_ && first_bad_peer < 0; ++p)
        if (peers_send[size_t(p)] != recv_counts[size_t(p)]) first_bad_peer = p;
    int first_bad_rank = first_bad_peer >= 0 ? rank_ : size_;
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, &first_bad_rank, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce");
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
    mpi_check(MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    staging_.to_device(recv_buf, recv, recv_bytes);
}

}  // namespace moe
