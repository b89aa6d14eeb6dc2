// The MPI communicator, process groups and consistency checks, run on every
// rank of the world (mpiexec -np 2 and 4, and a world of one). Each rank's
// input is a function of its rank, so every rank computes the expected result
// of a collective locally. Value checks use CHECK, not REQUIRE, so that a
// failing rank still makes the same collective calls as the others.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#include "comm/agreement.h"
#include "comm/process_groups.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::contains;
using moe::test::error_of;

namespace {

// Run each collective with whole buffers in one MPI call, and split into
// pieces of 3 elements (bytes for broadcast), as counts beyond INT_MAX are.
const int64_t kMaxCounts[] = {MpiCommunicator::kMaxMpiCount, 3};

// A small integer, exact in every dtype, that varies with all its arguments.
int pattern(int a, int b, int64_t i) { return int((a * 7 + b * 3 + i * 5) % 13) - 6; }

template <class T> std::vector<T> values(int64_t n, int a, int b) {
    std::vector<T> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = T(pattern(a, b, i));
    return v;
}

template <class T> T reduce(T x, T y, ReduceOp op) { return op == ReduceOp::Sum ? x + y : std::max(x, y); }

template <class T> void check_all_reduce(Communicator& comm, ReduceOp op) {
    const int64_t n = 10;
    std::vector<T> buf = values<T>(n, comm.rank(), 0);
    std::vector<T> expected = values<T>(n, 0, 0);
    for (int r = 1; r < comm.size(); ++r) {
        const std::vector<T> theirs = values<T>(n, r, 0);
        for (size_t i = 0; i < expected.size(); ++i) expected[i] = reduce(expected[i], theirs[i], op);
    }
    comm.all_reduce(buf.data(), n, dtype_of<T>(), op);
    CHECK(buf == expected);
}

// Block b of rank r's send buffer is values(count, r, b).
template <class T> void check_reduce_scatter(Communicator& comm, ReduceOp op) {
    const int64_t count = 7;
    std::vector<T> send;
    for (int b = 0; b < comm.size(); ++b) {
        const std::vector<T> block = values<T>(count, comm.rank(), b);
        send.insert(send.end(), block.begin(), block.end());
    }
    std::vector<T> expected = values<T>(count, 0, comm.rank());
    for (int r = 1; r < comm.size(); ++r) {
        const std::vector<T> theirs = values<T>(count, r, comm.rank());
        for (size_t i = 0; i < expected.size(); ++i) expected[i] = reduce(expected[i], theirs[i], op);
    }
    std::vector<T> recv(static_cast<size_t>(count));
    comm.reduce_scatter(send.data(), recv.data(), count, dtype_of<T>(), op);
    CHECK(recv == expected);
}

// T's bits travel; dtype says how the communicator sees them.
template <class T> void check_all_gather(Communicator& comm, DType dtype) {
    const int64_t count = 5;
    std::vector<T> expected;
    for (int r = 0; r < comm.size(); ++r) {
        const std::vector<T> block = values<T>(count, r, 1);
        expected.insert(expected.end(), block.begin(), block.end());
    }
    const std::vector<T> send = values<T>(count, comm.rank(), 1);
    std::vector<T> recv(expected.size());
    comm.all_gather(send.data(), recv.data(), count, dtype);
    CHECK(recv == expected);
}

// Element i sent from rank s to rank d in the all-to-all tests.
int32_t token(int s, int d, int64_t i) { return int32_t(s * 10000 + d * 100 + i); }

// Elements rank s sends rank d in the all_to_all_v test: 0 to 5, zero for some
// pairs (rank 0 to itself among them).
int64_t uneven_count(int s, int d) { return ((s + 2 * d) % 3) * 2 + (s + d) % 2; }

std::vector<int64_t> counts_to_each(int n, int64_t count) { return std::vector<int64_t>(size_t(n), count); }

}  // namespace

TEST_CASE("the world communicator spans MPI's world", "[mpi]") {
    int rank = -1, size = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    auto world = MpiCommunicator::world();
    REQUIRE(world->rank() == rank);
    REQUIRE(world->size() == size);
}

TEST_CASE("all_reduce sums and takes the maximum over the group", "[mpi]") {
    for (int64_t max_count : kMaxCounts) {
        INFO("max_count " << max_count);
        auto world = MpiCommunicator::world(max_count);
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
            check_all_reduce<float>(*world, op);
            check_all_reduce<double>(*world, op);
            check_all_reduce<int32_t>(*world, op);
        }
    }
}

TEST_CASE("all_reduce_async reduces each buffer of a bucket, whatever its dtype", "[mpi]") {
    auto world = MpiCommunicator::world();
    std::vector<float> f = values<float>(9, world->rank(), 1), f_alone = f;
    std::vector<double> d = values<double>(4, world->rank(), 2), d_alone = d;
    std::vector<int32_t> i = values<int32_t>(6, world->rank(), 3), i_alone = i;
    world->all_reduce_async({{f.data(), 9, DType::F32}, {d.data(), 4, DType::F64}, {i.data(), 6, DType::I32}},
                            ReduceOp::Sum);
    world->wait_async();
    world->all_reduce(f_alone.data(), 9, DType::F32, ReduceOp::Sum);
    world->all_reduce(d_alone.data(), 4, DType::F64, ReduceOp::Sum);
    world->all_reduce(i_alone.data(), 6, DType::I32, ReduceOp::Sum);
    CHECK(f == f_alone);
    CHECK(d == d_alone);
    CHECK(i == i_alone);
    if (world->size() > 1) CHECK(i != values<int32_t>(6, world->rank(), 3));  // it did reduce
}

TEST_CASE("reduce_scatter leaves block r of the reduction on rank r", "[mpi]") {
    for (int64_t max_count : kMaxCounts) {
        INFO("max_count " << max_count);
        auto world = MpiCommunicator::world(max_count);
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
            check_reduce_scatter<float>(*world, op);
            check_reduce_scatter<double>(*world, op);
            check_reduce_scatter<int32_t>(*world, op);
        }
    }
}

TEST_CASE("all_gather puts rank r's block at block r on every rank", "[mpi]") {
    for (int64_t max_count : kMaxCounts) {
        INFO("max_count " << max_count);
        auto world = MpiCommunicator::world(max_count);
        check_all_gather<float>(*world, DType::F32);
        check_all_gather<double>(*world, DType::F64);
        check_all_gather<int32_t>(*world, DType::I32);
        check_all_gather<uint16_t>(*world, DType::BF16);
    }
}

TEST_CASE("reductions refuse BF16 host buffers", "[mpi]") {
    auto world = MpiCommunicator::world();
    std::vector<uint16_t> buf(2 * size_t(world->size()));
    const std::string message =
        error_of<CommError>([&] { world->all_reduce(buf.data(), 2, DType::BF16, ReduceOp::Sum); });
    CHECK(contains(message, "all_reduce: MPI cannot reduce BF16"));
    CHECK_THROWS_AS(world->reduce_scatter(buf.data(), buf.data(), 1, DType::BF16, ReduceOp::Max), CommError);
}

TEST_CASE("broadcast copies the root's bytes to every rank", "[mpi]") {
    for (int64_t max_count : kMaxCounts) {
        INFO("max_count " << max_count);
        auto world = MpiCommunicator::world(max_count);
        for (int root = 0; root < world->size(); ++root) {
            std::vector<int8_t> buf = values<int8_t>(11, root, 2);
            if (world->rank() != root) buf.assign(buf.size(), 0);
            world->broadcast(buf.data(), int64_t(buf.size()), root);
            CHECK(buf == values<int8_t>(11, root, 2));
        }
    }
}

TEST_CASE("an MPI failure is a CommError with MPI's reason", "[mpi]") {
    REQUIRE_NOTHROW(mpi_check(MPI_SUCCESS, "MPI_Bcast"));
    CHECK(error_of<CommError>([] { mpi_check(MPI_ERR_ROOT, "MPI_Bcast"); }) == "MPI_Bcast failed: " +
                                                                                     mpi_error_string(MPI_ERR_ROOT));
    CHECK(contains(mpi_error_string(MPI_ERR_ROOT), "MPI_ERR_ROOT"));
    // A real call: errors return from MPI instead of aborting the job.
    auto world = MpiCommunicator::world();
    int32_t word = 0;
    const std::string message = error_of<CommError>([&] { world->broadcast(&word, 4, world->size()); });
    CHECK(contains(message, "MPI_Ibcast failed: MPI_ERR_ROOT"));
}

TEST_CASE("all_to_all sends block p to rank p and counts the bytes that leave the rank", "[mpi]") {
    for (int64_t max_count : kMaxCounts) {
        INFO("max_count " << max_count);
        auto world = MpiCommunicator::world(max_count);
        const int me = world->rank(), n = world->size();
        const int64_t count = 5;
        std::vector<int32_t> send, expected;
        for (int p = 0; p < n; ++p)
            for (int64_t i = 0; i < count; ++i) {
                send.push_back(token(me, p, i));
                expected.push_back(token(p, me, i));
            }
        std::vector<int32_t> recv(send.size());
        REQUIRE(world->bytes_sent_all_to_all() == 0);
        world->all_to_all(send.data(), recv.data(), count, DType::I32);
        CHECK(recv == expected);
        const int64_t per_call = (n - 1) * count * 4;  // the block to itself stays
        CHECK(world->bytes_sent_all_to_all() == per_call);
        world->all_to_all(send.data(), recv.data(), count, DType::I32);
        CHECK(world->bytes_sent_all_to_all() == 2 * per_call);
        world->reset_bytes_sent_all_to_all();
        CHECK(world->bytes_sent_all_to_all() == 0);
    }
}

TEST_CASE("all_to_all_v moves uneven and zero counts packed by peer", "[mpi]") {
    for (int64_t max_count : {MpiCommunicator::kMaxMpiCount, int64_t(2)}) {
        INFO("max_count " << max_count);
        auto world = MpiCommunicator::world(max_count);
        const int me = world->rank(), n = world->size();
        std::vector<int64_t> send_counts, recv_counts;
        std::vector<int32_t> send, expected;
        int64_t bytes_to_others = 0;
        for (int p = 0; p < n; ++p) {
            send_counts.push_back(uneven_count(me, p));
            recv_counts.push_back(uneven_count(p, me));
            for (int64_t i = 0; i < uneven_count(me, p); ++i) send.push_back(token(me, p, i));
            for (int64_t i = 0; i < uneven_count(p, me); ++i) expected.push_back(token(p, me, i));
            if (p != me) bytes_to_others += uneven_count(me, p) * 4;
        }
        std::vector<int32_t> recv(expected.size());
        world->all_to_all_v(send.data(), send_counts, recv.data(), recv_counts, DType::I32);
        CHECK(recv == expected);
        CHECK(world->bytes_sent_all_to_all() == bytes_to_others);

        // Nothing to send at all: every rank returns, nothing is counted.
        const std::vector<int64_t> none = counts_to_each(n, 0);
        world->all_to_all_v(nullptr, none, nullptr, none, DType::F64);
        CHECK(world->bytes_sent_all_to_all() == bytes_to_others);
    }
}

TEST_CASE("all_to_all_v refuses counts that do not fit the group or the peers", "[mpi]") {
    auto world = MpiCommunicator::world();
    const int me = world->rank(), n = world->size();
    const int left = (me + n - 1) % n;
    std::vector<int32_t> send(2 * size_t(n), 1), recv(2 * size_t(n) + 1);
    const std::vector<int64_t> twos = counts_to_each(n, 2);

    SECTION("one count per rank, none negative") {
        const std::vector<int64_t> too_many = counts_to_each(n + 1, 2);
        CHECK(contains(error_of<CommError>([&] {
                           world->all_to_all_v(send.data(), too_many, recv.data(), twos, DType::I32);
                       }),
                       "send_counts has " + std::to_string(n + 1) + " entries for a group of " + std::to_string(n)));
        std::vector<int64_t> negative = twos;
        negative[0] = -1;
        CHECK(contains(error_of<CommError>([&] {
                           world->all_to_all_v(send.data(), twos, recv.data(), negative, DType::I32);
                       }),
                       "recv_counts[0] is -1"));
    }
    // Every rank expects a count from its left neighbour that differs from what
    // that neighbour sends, so every rank reports it (a world of one: itself).
    SECTION("expecting more than the peer sends") {
        std::vector<int64_t> expect = twos;
        expect[size_t(left)] = 3;
        const std::string message = error_of<CommError>(
            [&] { world->all_to_all_v(send.data(), twos, recv.data(), expect, DType::I32); });
        CHECK(contains(message, "rank " + std::to_string(me) + " expected recv_counts[" + std::to_string(left) +
                                    "] = 3 elements from rank " + std::to_string(left)));
        CHECK(contains(message, "must equal rank p's send_counts[" + std::to_string(me) + "]"));
    }
    SECTION("expecting less than the peer sends") {
        std::vector<int64_t> expect = twos;
        expect[size_t(left)] = 1;
        const std::string message = error_of<CommError>(
            [&] { world->all_to_all_v(send.data(), twos, recv.data(), expect, DType::I32); });
        CHECK(contains(message, "expected recv_counts[" + std::to_string(left) + "] = 1 elements"));
    }
    // One rank's mistake stops them all, so none waits for a transfer.
    SECTION("only the last rank expects the wrong count") {
        std::vector<int64_t> expect = twos;
        if (me == n - 1) expect[size_t(left)] = 5;
        const std::string message = error_of<CommError>(
            [&] { world->all_to_all_v(send.data(), twos, recv.data(), expect, DType::I32); });
        if (me == n - 1)
            CHECK(contains(message, "expected recv_counts[" + std::to_string(left) + "] = 5 elements"));
        else
            CHECK(contains(message, "rank " + std::to_string(n - 1) + " expected other counts than its peers send"));
    }
    CHECK(world->bytes_sent_all_to_all() == 0);
}

TEST_CASE("process groups: EP groups of consecutive ranks, expert-DP groups across them", "[mpi]") {
    const int world_size = MpiCommunicator::world()->size();
    for (int ep = 1; ep <= world_size; ++ep) {
        if (world_size % ep != 0) continue;
        INFO("expert_parallel " << ep);
        ProcessGroups groups = make_process_groups(ep);
        const int rank = groups.world_rank();
        REQUIRE(groups.world_size() == world_size);
        CHECK(groups.ep_size() == ep);
        CHECK(groups.ep_rank() == rank % ep);
        CHECK(groups.dp_size() == world_size / ep);
        CHECK(groups.dp_rank() == rank / ep);

        // Members, by world rank, in group rank order.
        std::vector<int32_t> ep_members(static_cast<size_t>(groups.ep_size()));
        std::vector<int32_t> dp_members(static_cast<size_t>(groups.dp_size()));
        std::vector<int32_t> ep_expected, dp_expected;
        for (int i = 0; i < ep; ++i) ep_expected.push_back(rank / ep * ep + i);
        for (int i = 0; i < world_size / ep; ++i) dp_expected.push_back(rank % ep + i * ep);
        const int32_t me = rank;
        groups.ep->all_gather(&me, ep_members.data(), 1, DType::I32);
        groups.expert_dp->all_gather(&me, dp_members.data(), 1, DType::I32);
        CHECK(ep_members == ep_expected);
        CHECK(dp_members == dp_expected);
    }
}

TEST_CASE("an expert_parallel that does not divide the world stops every rank", "[mpi]") {
    const int world_size = MpiCommunicator::world()->size();
    // A JobError: every rank raises it, so moe-train reports it once and exits.
    const std::string message = error_of<JobError>([&] { make_process_groups(world_size + 1); });
    CHECK(contains(message, "parallel.expert_parallel = " + std::to_string(world_size + 1) +
                                " does not divide the world size " + std::to_string(world_size)));
    if (world_size % 3 != 0) CHECK_THROWS_AS(make_process_groups(3), JobError);
    CHECK(contains(error_of<JobError>([] { make_process_groups(0); }), "parallel.expert_parallel = 0 must be >= 1"));
}

TEST_CASE("check_same_on_all_ranks names the ranks whose text differs", "[mpi]") {
    auto world = MpiCommunicator::world();
    REQUIRE_NOTHROW(check_same_on_all_ranks(*world, "config", "model:\n  dim: 64\n"));
    if (world->size() < 2) return;  // a world of one cannot disagree with itself
    const std::string text = world->rank() % 2 == 1 ? "dim: 65" : "dim: 64";
    std::string odd_ranks;
    for (int r = 1; r < world->size(); r += 2) odd_ranks += (odd_ranks.empty() ? "" : ", ") + std::to_string(r);
    const std::string message = error_of<JobError>([&] { check_same_on_all_ranks(*world, "config", text); });
    CHECK(message == "ranks were started with different config: rank(s) " + odd_ranks +
                         " differ from rank 0; start every rank with the same config");
}

TEST_CASE("a nested MpiRuntime leaves MPI running", "[mpi]") {
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    {
        MpiRuntime inner;
        CHECK(inner.world_size() == size);
    }
    CHECK(mpi_running());
}

TEST_CASE("an error met by one rank stops every rank with its message", "[mpi]") {
    auto world = MpiCommunicator::world();
    const int me = world->rank(), n = world->size();
    REQUIRE_NOTHROW(stop_all_if_any_failed(*world, ""));
    // The last rank and, if there are three or more, rank 1 fail: rank 1's
    // message (the lowest failing rank) reaches everyone.
    const int reported = n >= 3 ? 1 : n - 1;
    std::string error;
    if (me == n - 1) error = "the last rank's error";
    if (n >= 3 && me == 1) error = "rank one's error";
    try {
        on_all_ranks(world.get(), [&] {
            if (!error.empty()) throw std::runtime_error(error);
        });
        FAIL("no rank threw");
    } catch (const JobError& e) {
        CHECK(n > 1);
        CHECK(e.rank() == reported);
        CHECK(std::string(e.what()) == (n >= 3 ? "rank one's error" : "the last rank's error"));
    } catch (const std::runtime_error& e) {  // a world of one passes f's own exception
        CHECK(n == 1);
        CHECK(std::string(e.what()) == "the last rank's error");
    }
}

TEST_CASE("without a world of several ranks, on_all_ranks passes exceptions unchanged", "[mpi]") {
    CHECK_THROWS_AS(on_all_ranks(nullptr, [] { throw std::out_of_range("x"); }), std::out_of_range);
}
