// The NCCL communicator at world size 1 (NCCL refuses two ranks on one GPU):
// every collective on device buffers, all-to-all-v to itself, host buffers
// through MPI, and the ordering against the compute stream.
#include "comm/mpi_communicator.h"
#include "tests/gpu/gpu_testing.h"

#if MOE_HAVE_NCCL
#include "comm/nccl_communicator.h"

using namespace moe;
using namespace moe::test;

TEST_CASE("NCCL collectives at world size 1 leave device data as one rank's reduction", "[gpu]") {
    Backends b;
    NcclCommunicator comm(MpiCommunicator::world(), b.gpu.stream());
    REQUIRE(comm.size() == 1);
    std::vector<float> x = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f};
    Tensor buf = b.upload(x, DType::F32, {5});
    // Queued behind a compute op on the backend's stream: the collective must
    // see the scaled values.
    b.gpu.scale(buf, 2.0);
    comm.all_reduce(buf.data, 5, DType::F32, ReduceOp::Sum);
    b.gpu.add(buf, buf, 1.0);  // and compute after it sees its result
    std::vector<float> want = {6.0f, -8.0f, 13.0f, 0.0f, 28.0f};
    REQUIRE(b.download(buf) == want);

    Tensor gathered = b.zeros(DType::F32, {5});
    comm.all_gather(buf.data, gathered.data, 5, DType::F32);
    REQUIRE(b.download(gathered) == want);
    Tensor scattered = b.zeros(DType::F32, {5});
    comm.reduce_scatter(buf.data, scattered.data, 5, DType::F32, ReduceOp::Max);
    REQUIRE(b.download(scattered) == want);
    comm.broadcast(buf.data, int64_t(5 * sizeof(float)), 0);
    REQUIRE(b.download(buf) == want);
}

TEST_CASE("an NCCL bucket of reductions sees the compute before it, and the compute after wait_async sees it",
          "[gpu]") {
    Backends b;
    NcclCommunicator comm(MpiCommunicator::world(), b.gpu.stream());
    Tensor f = b.upload({1.5f, -2.0f, 3.25f}, DType::F32, {3}), h = b.upload({4.0f, -0.5f}, DType::BF16, {2});
    b.gpu.scale(f, 2.0);
    b.gpu.scale(h, 2.0);
    comm.all_reduce_async({{f.data, 3, DType::F32}, {h.data, 2, DType::BF16}}, ReduceOp::Sum);
    comm.wait_async();
    b.gpu.add(f, f, 1.0);
    b.gpu.add(h, h, 1.0);
    REQUIRE(b.download(f) == std::vector<float>{6.0f, -8.0f, 13.0f});
    REQUIRE(b.download(h) == std::vector<float>{16.0f, -2.0f});
    double host[2] = {1.25, -3.0};  // host buffers go through MPI
    comm.all_reduce_async({{host, 2, DType::F64}}, ReduceOp::Sum);
    REQUIRE((host[0] == 1.25 && host[1] == -3.0));
    REQUIRE_THROWS_AS(comm.all_reduce_async({{f.data, 3, DType::F32}, {host, 2, DType::F64}}, ReduceOp::Sum),
                      CommError);
}

TEST_CASE("NCCL all-to-all-v to itself moves the rows and counts its bytes as local", "[gpu]") {
    Backends b;
    NcclCommunicator comm(MpiCommunicator::world(), b.gpu.stream());
    std::vector<float> rows(64), doubled(64);
    for (size_t i = 0; i < rows.size(); ++i) {
        rows[i] = float(i) - 10.0f;
        doubled[i] = 2 * rows[i];
    }
    Tensor send = b.upload(rows, DType::BF16, {64}), recv = b.zeros(DType::BF16, {64});
    // Ordered on the GPU, not by the host: the exchange sees the compute
    // queued before it and the compute after it sees the exchange.
    b.gpu.scale(send, 2.0);
    comm.all_to_all_v(send.data, {64}, recv.data, {64}, DType::BF16);
    b.gpu.add(recv, recv, 1.0);
    for (float& x : doubled) x *= 2;
    REQUIRE(b.download(recv) == doubled);
    REQUIRE(comm.bytes_sent_all_to_all() == 0);  // nothing left this rank
    REQUIRE(comm.seconds_in_all_to_all() > 0);   // timed on the comm stream
}

TEST_CASE("host buffers given to the NCCL communicator go through MPI", "[gpu]") {
    CudaOps gpu(0);
    NcclCommunicator comm(MpiCommunicator::world(), gpu.stream());
    double v[2] = {1.25, -3.0};
    comm.all_reduce(v, 2, DType::F64, ReduceOp::Sum);
    REQUIRE(v[0] == 1.25);
    REQUIRE(v[1] == -3.0);
    std::vector<int32_t> mine = {4, 5}, theirs(2);
    comm.all_to_all(mine.data(), theirs.data(), 2, DType::I32);
    REQUIRE(theirs == mine);
}
#endif
