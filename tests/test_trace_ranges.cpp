// The engine's profiler ranges (engine/run/trace_range.h) as a profiler sees
// them: moe-train runs with tests/nvtx_recorder.cpp loaded by NVTX where
// Nsight's library would be, and the ranges it recorded are read back as a
// tree and held to README "Profiling".
#include <fstream>
#include <string>
#include <vector>

#include "tests/catch.h"
#include "tests/train_fixture.h"

using namespace moe;

namespace {

using Names = std::vector<std::string>;

struct Range {
    std::string name;
    std::vector<Range> inside;

    Names names() const {
        Names out;
        for (const Range& r : inside) out.push_back(r.name);
        return out;
    }
    const Range& at(size_t i) const {
        REQUIRE(i < inside.size());
        return inside[i];
    }
    std::string join() const {
        std::string s;
        for (const Range& r : inside) s += (s.empty() ? "" : ";") + r.name;
        return s;
    }
};

// The record's lines ("+name" a push, "-" a pop) as the tree they nest into,
// under a root that is no range; every push must be popped.
Range read_record(const std::string& path) {
    std::ifstream in(path);
    REQUIRE(in);
    Range root;
    std::vector<Range*> open = {&root};
    for (std::string line; std::getline(in, line);) {
        if (line == "-") {
            REQUIRE(open.size() > 1);  // a pop with no range open
            open.pop_back();
        } else {
            REQUIRE(line.size() > 1);
            REQUIRE(line[0] == '+');
            open.back()->inside.push_back({line.substr(1), {}});
            open.push_back(&open.back()->inside.back());
        }
    }
    CHECK(open.size() == 1);  // every range closed
    return root;
}

// moe-train on cfg with the recorder in a profiler's place: its ranges.
Range traced_run(Config cfg, const std::string& name) {
    const std::string config_path = cfg.run.out_dir + "-" + name + ".yaml";
    const std::string record = cfg.run.out_dir + "-" + name + ".nvtx";
    std::ofstream(config_path) << to_yaml(cfg);
    const test::ProgramResult r =
        test::run_program("env", {std::string("NVTX_INJECTION64_PATH=") + MOE_NVTX_RECORDER_LIB,
                                  "MOE_NVTX_RECORD=" + record, MOE_TRAIN_BIN, "--config", config_path});
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    return read_record(record);
}

// A block's ops in a forward (or a recomputation): its attention, its MoE
// (the router and the dispatch, the experts, the combine), the dynamics.
void check_block(const Range& block) {
    INFO(block.name << ": " << block.join());
    REQUIRE(block.names() == Names{"attention", "other", "routing", "experts", "routing", "dynamics"});
    CHECK(block.at(2).names() == Names{"router", "dispatch"});
    CHECK(block.at(4).names() == Names{"combine"});
}

}  // namespace

TEST_CASE("moe-train marks each step, pass, layer and phase with a profiler range", "[unit]") {
    Config cfg = test::small_config("trace-ranges");
    cfg.train.steps = 2;
    cfg.eval.every = 0;  // validation at the end only
    const Range run = traced_run(cfg, "plain");
    CHECK(run.names() == Names{"step 1", "step 2", "validation", "checkpoint"});

    for (const Range& step : {run.at(0), run.at(1)}) {
        INFO(step.name);
        REQUIRE(step.names() == Names{"forward", "backward", "grad sync", "optimizer"});
        const Range& forward = step.at(0);
        CHECK(forward.names() == Names{"other", "layer 0", "layer 1", "routing", "head"});
        check_block(forward.at(1));
        check_block(forward.at(2));
        const Range& backward = step.at(1);
        CHECK(backward.names() == Names{"head", "layer 1", "layer 0", "other"});
        for (const Range& layer : {backward.at(1), backward.at(2)}) {
            INFO(layer.name << ": " << layer.join());
            REQUIRE(layer.names() ==
                    Names{"dynamics", "routing", "experts", "routing", "routing", "other", "attention"});
            CHECK(layer.at(1).names() == Names{"combine"});
            CHECK(layer.at(3).names() == Names{"dispatch"});
            CHECK(layer.at(4).names() == Names{"router"});
        }
    }
    // Validation runs forwards only.
    for (const Range& pass : run.at(2).inside) CHECK(pass.name == "forward");
    CHECK(run.at(2).inside.size() == size_t(cfg.eval.batches));
}

TEST_CASE("with micro-batches and recomputation the ranges have a level for each", "[unit]") {
    Config cfg = test::small_config("trace-ranges-accum");
    cfg.train.steps = 1;
    cfg.optimizer.warmup_steps = 1;
    cfg.train.grad_accum_steps = 2;
    cfg.train.recompute = Recompute::full;
    cfg.eval.every = 0;
    cfg.data.val.clear();  // no validation
    const Range run = traced_run(cfg, "accum");
    REQUIRE(run.names() == Names{"step 1", "checkpoint"});
    const Range& step = run.at(0);
    REQUIRE(step.names() == Names{"micro-batch 0", "micro-batch 1", "grad sync", "optimizer"});
    for (const Range& micro : {step.at(0), step.at(1)}) {
        INFO(micro.name);
        REQUIRE(micro.names() == Names{"forward", "backward"});
        const Range& backward = micro.at(1);
        REQUIRE(backward.names() == Names{"head", "layer 1", "layer 0", "other"});
        for (const Range& layer : {backward.at(1), backward.at(2)}) {
            INFO(layer.name);
            REQUIRE(layer.names().front() == "recompute");
            check_block(layer.at(0));
        }
    }
}
