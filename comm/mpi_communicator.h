// The Communicator over MPI. Host buffers go to MPI directly; device buffers
// are staged through pinned host memory (comm/device_staging.h). Counts
// beyond what one MPI call takes (INT_MAX elements) are split into several
// calls.
#pragma once
#include <mpi.h>

#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/device_staging.h"

namespace moe {

class MpiCommunicator final : public Communicator {
public:
    static constexpr int64_t kMaxMpiCount = INT_MAX;

    // A private duplicate of MPI_COMM_WORLD, so this traffic never mixes with
    // other users of MPI. MPI must be running (see MpiRuntime).
    static std::unique_ptr<MpiCommunicator> world(int64_t max_count = kMaxMpiCount);

    // Takes ownership of comm. max_count: the most elements passed to one MPI
    // call; tests lower it to exercise the splitting.
    MpiCommunicator(MPI_Comm comm, int64_t max_count, double timeout_s = kDefaultTimeoutSeconds);
    ~MpiCommunicator() override;
    MpiCommunicator(const MpiCommunicator&) = delete;
    MpiCommunicator& operator=(const MpiCommunicator&) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    // Reductions refuse BF16: reduce an F32 copy on the host.
    void all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) override;
    void reduce_scatter(const void* send, void* recv, int64_t count, DType dtype, ReduceOp op) override;
    void all_gather(const void* send, void* recv, int64_t count, DType dtype) override;
    void broadcast(void* buf, int64_t bytes, int root) override;
    void barrier() override;
    std::unique_ptr<Communicator> split(int color, int key) override;
    void set_timeout(double seconds) override { timeout_s_ = seconds; }

protected:
    // Point-to-point messages to the peers with data, after a check that every
    // rank's recv_counts match what its peers send.
    void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                         const std::vector<int64_t>& recv_counts, DType dtype) override;

private:
    void check_counts_match(const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts);
    // Waits for the requests of one collective (`what`). Past the timeout the
    // ranks that are waiting find out which peers are not (peers_missing),
    // and CommError names them.
    void wait(std::vector<MPI_Request>& requests, const char* what);
    void wait(MPI_Request request, const char* what);
    // After a timeout: the ranks of the group that do not answer, in
    // `grace` seconds, this rank's message that it waits.
    std::vector<int> peers_missing(double grace);
    std::string describe_rank(int rank) const;  // "rank 3 (world rank 7)"

    DeviceStaging staging_;
    MPI_Comm comm_;
    MPI_Comm watch_ = MPI_COMM_NULL;  // a duplicate for the messages of peers_missing()
    int rank_ = 0;
    int size_ = 1;
    int64_t max_count_;
    double timeout_s_;
    std::vector<int> world_ranks_;  // of this group's ranks
};

}  // namespace moe
