// Collective communication over one process group. The interface knows no
// transport: MPI backs it for host buffers (comm/mpi_communicator.h), NCCL
// for device buffers (comm/nccl_communicator.h). Every rank of the group must
// make the same calls in the same order with matching counts, as with MPI and
// NCCL.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

#include "kernels/tensor.h"

namespace moe {

// A communication failure or a misuse of a collective (bad layout, counts that
// do not match). Thrown with one message naming the problem and the fix.
class CommError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

enum class ReduceOp { Sum, Max };

// One buffer of a bucket of reductions: count elements of dtype at data.
struct ReduceBuffer {
    void* data;
    int64_t count;
    DType dtype;
};

// Counts are in elements of the given dtype. Reductions take F32, F64 and I32;
// BF16 moves as opaque 2-byte elements (backends may refuse to reduce it).
// The send and receive buffers of one call must not overlap, but for the
// in-place forms NCCL knows too: reduce_scatter's recv = send + rank * count,
// all_gather's send = recv + rank * count.
class Communicator {
public:
    virtual ~Communicator() = default;

    virtual int rank() const = 0;
    virtual int size() const = 0;

    // buf[count] is replaced by the element-wise reduction over the group.
    virtual void all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) = 0;
    // all_reduce of each buffer of a bucket, allowed to finish later: the
    // compute queued after it may run alongside it until wait_async(). NCCL
    // fuses the bucket into one launch; transports that cannot overlap (MPI)
    // reduce each buffer at once.
    virtual void all_reduce_async(const std::vector<ReduceBuffer>& bucket, ReduceOp op) {
        for (const ReduceBuffer& b : bucket) all_reduce(b.data, b.count, b.dtype, op);
    }
    // reduce_scatter of each buffer of a bucket, in place (buffer b's count
    // elements, a multiple of size(), reduced, leave block rank() of b on this
    // rank), allowed to finish later as all_reduce_async is.
    virtual void reduce_scatter_async(const std::vector<ReduceBuffer>& bucket, ReduceOp op) {
        for (const ReduceBuffer& b : bucket) {
            const int64_t block = b.count / size();
            char* own = static_cast<char*>(b.data) + size_t(rank()) * size_t(block) * dtype_size(b.dtype);
            reduce_scatter(b.data, own, block, b.dtype, op);
        }
    }
    // Later compute sees the results of every all_reduce_async and
    // reduce_scatter_async before it.
    virtual void wait_async() {}
    // send[size() * count]: block r of every rank, reduced, lands in recv[count] of rank r.
    virtual void reduce_scatter(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op) = 0;
    // send[count] of rank r lands in block r of recv[size() * count] on every rank.
    virtual void all_gather(const void* send, void* recv, int64_t count, DType dtype) = 0;
    // buf[bytes] of rank root is copied to every rank.
    virtual void broadcast(void* buf, int64_t bytes, int root) = 0;
    virtual void barrier() = 0;
    // A new group per distinct color; ranks ordered by key (ties by rank here).
    // Collective over this group. The new group keeps this one's timeout.
    virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

    // How long a collective may wait for the group before the peers that did
    // not join it are named and the job stopped (0: wait forever). A rank
    // that stopped (SIGSTOP, a hung node) would otherwise keep every other
    // rank waiting. Default kDefaultTimeoutSeconds.
    static constexpr double kDefaultTimeoutSeconds = 1800;
    virtual void set_timeout(double seconds) = 0;

    // Block p of send[size() * count] goes to rank p; block p of recv comes from rank p.
    void all_to_all(const void* send, void* recv, int64_t count, DType dtype);
    // send holds send_counts[p] elements for each rank p, packed in rank order;
    // recv receives recv_counts[p] elements from each rank p, packed likewise.
    // recv_counts[p] must equal send_counts[rank()] of rank p.
    void all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                      const std::vector<int64_t>& recv_counts, DType dtype);

    // Bytes this rank sent to other ranks (not to itself) in all_to_all(_v)
    // since construction or the last reset: the dispatch volume.
    int64_t bytes_sent_all_to_all() const { return bytes_sent_all_to_all_; }
    void reset_bytes_sent_all_to_all() { bytes_sent_all_to_all_ = 0; }
    // Time spent in all_to_all(_v) since construction: waiting for the
    // slowest peer included, so it shows load imbalance as well as transfer.
    // Here the calls' wall time; a transport that queues the exchange on a
    // device stream measures it there (and may wait for it to finish).
    virtual double seconds_in_all_to_all() const { return seconds_in_all_to_all_; }

protected:
    // all_to_all_v with validated counts (one per rank, none negative).
    virtual void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                          const std::vector<int64_t>& recv_counts, DType dtype) = 0;

private:
    int64_t bytes_sent_all_to_all_ = 0;
    double seconds_in_all_to_all_ = 0;
};

}  // namespace moe
