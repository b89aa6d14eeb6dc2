// The model presets of configs/models against the seed's table, and the
// memory planner (moe-train --plan): its figures are what a run allocates,
// it says whether a layout fits, and it finds the smallest one that does.
#include <filesystem>
#include <limits>
#include <string>

#include "engine/config/config.h"
#include "engine/model/memory_plan.h"
#include "engine/run/backend.h"
#include "engine/model/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::contains;

namespace {

std::string preset(const std::string& name) { return std::string(MOE_SOURCE_DIR) + "/configs/models/" + name + ".yaml"; }

// The CPU backend counting what a model allocates (in any precision: nothing
// is computed).
class CountingOps : public CpuOps {
public:
    void* alloc(size_t bytes) override {
        used_ += bytes;
        return CpuOps::alloc(bytes);
    }
    size_t memory_available() const override { return std::numeric_limits<size_t>::max(); }
    size_t used() const { return used_; }

private:
    size_t used_ = 0;
};

}  // namespace

TEST_CASE("each preset has the total and active parameters of the seed's table, within 10%", "[unit]") {
    struct Row {
        const char* name;
        int experts, top_k;
        double total, active;
    };
    // The seed's table; Mixtral-style as MODEL.md counts Mixtral 8x7B's shapes.
    for (const Row& row : {Row{"small", 4, 1, 500e6, 200e6}, Row{"medium", 8, 2, 2e9, 500e6},
                           Row{"large", 16, 2, 8e9, 1e9}, Row{"mixtral", 8, 2, 46.7e9, 12.9e9}}) {
        INFO(row.name);
        const Config c = load_config(preset(row.name));
        CHECK(c.model.moe.num_experts == row.experts);
        CHECK(c.model.moe.top_k == row.top_k);
        CHECK(c.model.moe.router == RouterKind::learned);
        CHECK(c.model.dynamics.enabled);
        CHECK(c.model.num_kv_heads < c.model.num_heads);  // GQA
        const ParameterCounts n = count_parameters(c.model);
        CHECK(std::fabs(n.total / row.total - 1) <= 0.10);
        CHECK(std::fabs(n.active / row.active - 1) <= 0.10);
    }
    const Config mixtral = load_config(preset("mixtral"));
    CHECK(mixtral.model.hidden_size == 4096);
    CHECK(mixtral.model.num_layers == 32);
    CHECK(mixtral.model.num_heads == 32);
    CHECK(mixtral.model.num_kv_heads == 8);
    CHECK(mixtral.model.moe.expert_hidden_size == 14336);
    CHECK(mixtral.model.vocab_size == 32000);
}

TEST_CASE("a rank's plan is what the run allocates, split and recomputed too", "[unit]") {
    Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml");
    c.run.device = "cuda";  // bf16 activations and working copy: the plan of a GPU
    c.model.moe.num_experts = 8;
    for (const int world : {1, 4}) {
        for (const bool shard : {false, true}) {
            for (const Recompute r : {Recompute::none, Recompute::experts, Recompute::full}) {
                c.parallel.expert_parallel = world == 1 ? 1 : 2;
                c.parallel.shard_optimizer = shard;
                c.train.recompute = r;
                INFO("world " << world << ", split " << shard << ", recompute " << name_of(r));
                const RankPlan plan = plan_rank(c, world);
                CountingOps ops;
                ModelOptions options;
                options.ep = GroupPlace::planned(c.parallel.expert_parallel, 0);
                options.recompute = r;
                if (shard) options.shards = {GroupPlace::planned(world, 0), GroupPlace::planned(world / 2 + (world == 1), 0)};
                const Model model(c.model, ops, Precision::mixed_bf16(), c.train.micro_batch_size, c.train.seq_len,
                                  options);
                CHECK(ops.used() == plan.total() - plan.runtime);
                CHECK(plan.runtime == kGpuRuntimeBytes);
                if (shard && world > 1) CHECK(plan.parameters.moments < plan_rank([&] {
                                                  Config whole = c;
                                                  whole.parallel.shard_optimizer = false;
                                                  return whole;
                                              }(), world).parameters.moments);
            }
        }
    }
}

TEST_CASE("the planner says whether a layout fits, and finds the smallest that does", "[unit]") {
    const Config large = load_config(preset("large"));
    constexpr size_t kH100 = size_t(79.6 * 1024 * 1024 * 1024);
    const std::string fits = plan_report(large, plan_rank(large, 8), kH100, "--memory-gib");
    CHECK(contains(fits, "model: 7.550B parameters, 1.076B active a token"));
    CHECK(contains(fits, "layout: 8 rank(s), expert parallel 8 x data parallel 1, 2 expert(s) a rank"));
    CHECK(contains(fits, "fits: yes"));
    const std::string tight = plan_report(large, plan_rank(large, 8), size_t(20) << 30, "--memory-gib");
    CHECK(contains(tight, "fits: no"));
    CHECK(contains(tight, "GiB short"));
    // Large on one node of 8 H100s; Mixtral-style needs several, with the split and recomputation.
    for (const LayoutFit& f : smallest_layouts(large, 8, kH100))
        if (f.recompute == Recompute::none) CHECK(f.nodes == 1);
    const Config mixtral = load_config(preset("mixtral"));
    int fewest = 0;
    for (const LayoutFit& f : smallest_layouts(mixtral, 8, kH100)) {
        if (!f.shard_optimizer) CHECK(f.nodes == 0);
        if (f.nodes && (!fewest || f.nodes < fewest)) fewest = f.nodes;
        if (f.nodes) CHECK(f.plan.total() <= kH100);
    }
    CHECK(fewest == 4);
    const std::string refused = test::error_of<ConfigError>([&] { plan_rank(large, 12); });
    CHECK(refused == "config: a layout of 12 ranks cannot split the experts over parallel.expert_parallel = 8: plan a "
                     "multiple of 8 ranks");
}

TEST_CASE("moe-train --plan prints the plan and the smallest layouts, and refuses bad flags", "[unit]") {
    const auto plan = [](std::vector<std::string> args) {
        args.insert(args.begin(), {"--config", preset("large"), "--plan"});
        return test::run_program(MOE_TRAIN_BIN, args);
    };
    const test::ProgramResult r = plan({"--memory-gib", "79.6", "--gpus-per-node", "8"});
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(contains(r.output, "per rank (GiB):"));
    CHECK(contains(r.output, "optimizer state (AdamW m and v)"));
    CHECK(contains(r.output, "smallest layouts on nodes of 8 GPUs of 79.6 GiB"));
    const test::ProgramResult bad = plan({"--ranks", "0"});
    CHECK(bad.exit_code == 2);
    CHECK(contains(bad.output, "--ranks takes a whole number from 1 to 1000000, got '0'"));
    const test::ProgramResult alone = test::run_program(MOE_TRAIN_BIN, {"--config", preset("large"), "--ranks", "8"});
    CHECK(contains(alone.output, "--ranks, --memory-gib and --gpus-per-node apply to --plan only"));
    const test::ProgramResult on_cpu = plan({"--set", "run.device=cpu", "--memory-gib", "79.6", "--gpus-per-node", "8"});
    CHECK(on_cpu.exit_code == 2);
    CHECK(contains(on_cpu.output, "--gpus-per-node plans nodes of GPUs but run.device is cpu: add --set run.device=cuda"));
    if (!gpu_memory()) {  // no GPU here: its memory must be given
        const test::ProgramResult unknown = plan({});
        CHECK(unknown.exit_code == 0);
        CHECK(contains(unknown.output, "fits: unknown (give --memory-gib, the memory of a GPU)"));
        const test::ProgramResult nodes = plan({"--gpus-per-node", "8"});
        CHECK(nodes.exit_code == 2);
        CHECK(contains(nodes.output, "--gpus-per-node needs the memory of one GPU: give --memory-gib"));
    }
}
