// A checkpoint saved by one layout resumes on another: the experts are read
// from whichever part holds them, the data position carries over, and the
// loss curve continues as if the layout had never changed (within fp32
// rounding: the sums run in another order). Layouts are sub-worlds of the
// mpiexec world, so one job covers world sizes 1, 2 and 4.
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "comm/agreement.h"
#include "comm/mpi_communicator.h"
#include "comm/process_groups.h"
#include "engine/io/checkpoint.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;

namespace {

// Micro-batches of one sequence; world * accum is the same on both sides, so
// each step sees the same sequences in the same micro-batches (the aux losses
// depend on how tokens are grouped into micro-batches, so that must not change).
struct Layout {
    int world, ep, accum;
    bool shard_optimizer = false;
};

// Runs train() on the first layout.world ranks of `world` (the others wait).
TrainSummary train_on(Communicator& world, const Layout& layout, const Config& base, const std::string& out_dir,
                      const std::string& resume) {
    std::unique_ptr<Communicator> sub = world.split(world.rank() < layout.world ? 0 : 1, world.rank());
    TrainSummary summary;
    if (world.rank() < layout.world) {
        Config c = base;
        c.train.micro_batch_size = 1;
        c.train.grad_accum_steps = layout.accum;
        c.parallel.expert_parallel = layout.ep;
        c.parallel.shard_optimizer = layout.shard_optimizer;
        c.run.out_dir = out_dir;
        ProcessGroups groups = make_process_groups(std::move(sub), layout.ep);
        CpuOps ops;
        TrainOptions opts;
        opts.resume = resume;
        summary = train(c, ops, opts, &groups);
    }
    world.barrier();
    return summary;
}

// Losses of rank 0, sent to every rank.
std::vector<double> from_rank0(Communicator& world, std::vector<double> v) {
    int32_t n = int32_t(v.size());
    world.broadcast(&n, sizeof n, 0);
    v.resize(size_t(n));
    world.broadcast(v.data(), int64_t(n) * int64_t(sizeof(double)), 0);
    return v;
}

void check_resharded_resume(const std::string& name, const Layout& from, const Layout& to) {
    auto world = MpiCommunicator::world();
    if (world->size() < std::max(from.world, to.world)) return;  // needs a bigger mpiexec world
    INFO(name);
    std::string data = world->rank() == 0 ? moe::test::make_data(name) : "";
    data = all_gather_strings(*world, data)[0];
    Config c = moe::test::small_config_at(data);
    c.model.moe.num_experts = 4;
    c.train.steps = 12;
    c.checkpoint.every = 6;
    c.eval.every = 0;
    c.data.val.clear();

    const TrainSummary straight = train_on(*world, from, c, data + "/straight", "");
    const std::vector<double> want = from_rank0(*world, straight.losses);
    REQUIRE(want.size() == 12);
    const std::string half = checkpoints_dir(data + "/straight") + "/step-00000006";
    const TrainSummary resumed = train_on(*world, to, c, data + "/resumed", half);
    if (world->rank() >= to.world) return;

    CHECK(resumed.first_step == 6);
    REQUIRE(resumed.losses.size() == 6);
    for (size_t i = 0; i < 6; ++i) {
        INFO("step " << 7 + i << ": " << resumed.losses[i] << " vs " << want[6 + i]);
        CHECK(std::fabs(resumed.losses[i] - want[6 + i]) <= 1e-4 * want[6 + i]);
    }
    // The data went on from where it was: both runs end at the same position.
    const CheckpointInfo a = read_checkpoint_info(checkpoints_dir(data + "/straight") + "/step-00000012");
    const CheckpointInfo b = read_checkpoint_info(resumed.checkpoint);
    CHECK(b.progress.step == 12);
    CHECK(b.progress.data.cursor == a.progress.data.cursor);
    CHECK(b.progress.data.epoch == a.progress.data.epoch);
    CHECK(b.expert_parallel == to.ep);
}

}  // namespace

// fp32 tolerance: relative 1e-4 per loss over the 6 resumed steps.
TEST_CASE("a checkpoint resumes on another layout", "[mpi]") {
    spdlog::set_level(spdlog::level::warn);
    check_resharded_resume("reshard-ep2-to-1", {2, 2, 2}, {1, 1, 4});
    check_resharded_resume("reshard-1-to-ep4", {1, 1, 4}, {4, 4, 1});
    check_resharded_resume("reshard-world2-to-4", {2, 1, 2}, {4, 2, 1});
    // ZeRO-1 checkpoints hold whole tensors: they resume split or not, on any layout.
    check_resharded_resume("reshard-zero4-to-1", {4, 2, 1, true}, {1, 1, 4});
    check_resharded_resume("reshard-1-to-zero4", {1, 1, 4}, {4, 1, 1, true});
    check_resharded_resume("reshard-zero2-to-zero4", {2, 1, 2, true}, {4, 2, 1, true});
}

TEST_CASE("a ZeRO-1 run resumed on its own layout continues bit for bit", "[mpi]") {
    spdlog::set_level(spdlog::level::warn);
    auto world = MpiCommunicator::world();
    if (world->size() < 2) return;
    const int W = world->size();
    std::string data = world->rank() == 0 ? moe::test::make_data("zero-exact") : "";
    data = all_gather_strings(*world, data)[0];
    Config c = moe::test::small_config_at(data);
    c.model.moe.num_experts = 4;
    c.train.steps = 10;
    c.checkpoint.every = 5;
    c.eval.every = 0;
    c.data.val.clear();
    const Layout layout{W, 2, 4 / W, true};
    const std::vector<double> want = from_rank0(*world, train_on(*world, layout, c, data + "/straight", "").losses);
    const TrainSummary rest =
        train_on(*world, layout, c, data + "/resumed", checkpoints_dir(data + "/straight") + "/step-00000005");
    REQUIRE(rest.losses.size() == 5);
    for (size_t i = 0; i < 5; ++i) CHECK(rest.losses[i] == want[5 + i]);
}
