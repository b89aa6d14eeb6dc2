// The expert-parallel step estimate (moe-bench --estimate-ep): each term
// against the arithmetic written out, and the gradient bytes the backward
// cannot hide against the parameters' names, and moe-bench's refusals.
#include "tools/ep_estimate.h"

#include <vector>

#include "engine/model/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/test_models.h"

using namespace moe;

namespace {

// configs/bench/medium.yaml: L 12, H 1024, 8 experts, top-2.
ModelConfig medium() { return load_config(std::string(MOE_SOURCE_DIR) + "/configs/bench/medium.yaml").model; }

}  // namespace

TEST_CASE("a token's all-to-all bytes are 4 exchanges a layer of a bf16 row per rank of its experts", "[unit]") {
    // Per layer: the rows, and per slot its row index and fp32 weight out and
    // the weight's gradient back (the learned router trains).
    const ModelConfig m = medium();
    const double slots = 12.0 * 2 * (4 + 4 + 4);
    // 8 ranks of one expert each: a token's 2 experts on 2 ranks.
    REQUIRE(ranks_per_token(m, 8) == 2.0);
    REQUIRE(all_to_all_bytes_per_token(m, 8) == 4.0 * 12 * 2 * 1024 * 2 + slots);
    // 2 ranks of 4 experts: both on one rank with chance 2 * (4/8 * 3/7).
    REQUIRE(ranks_per_token(m, 2) == Approx(2 - 2 * (4.0 / 8 * 3 / 7)));
    REQUIRE(all_to_all_bytes_per_token(m, 2) == Approx(4.0 * 12 * (2 - 12.0 / 28) * 1024 * 2 + slots));
    // Group-limited to one of 4 groups, each one rank's 2 experts: one row.
    ModelConfig grouped = m;
    grouped.moe.groups = 4;
    grouped.moe.group_limit = 1;
    REQUIRE(ranks_per_token(grouped, 4) == 1.0);
    REQUIRE(all_to_all_bytes_per_token(grouped, 4) == 4.0 * 12 * 1 * 1024 * 2 + slots);
    // Two groups of 4 kept of 4, on 8 ranks of one expert: 2 ranks again.
    grouped.moe.group_limit = 2;
    REQUIRE(ranks_per_token(grouped, 8) == 2.0);
    // Four groups of 2 kept of 4 on 2 ranks of 2 groups each: both groups on
    // one rank with chance 2 * (2/4 * 1/3), then the 2 experts spread over
    // the 4 of two groups.
    grouped.moe.group_limit = 2;
    REQUIRE(ranks_per_token(grouped, 2) ==
            Approx(2.0 / 6 * 1 + 4.0 / 6 * (2 - 2 * (2.0 / 4 * 1.0 / 3))));
    // Top-1 with the token_id router: one row, no weight gradient.
    ModelConfig top1 = medium();
    top1.moe.top_k = 1;
    top1.moe.router = RouterKind::token_id;
    REQUIRE(all_to_all_bytes_per_token(top1, 8) == 4.0 * 12 * 1 * 1024 * 2 + 12.0 * (4 + 4));
}

namespace {

// The ranks a token reaches, averaged over every choice of its groups and then
// of its experts among theirs, by enumeration.
double ranks_by_enumeration(int E, int G, int M, int k, int ep) {
    const int per_group = E / G, per_rank = E / ep;
    double total = 0, choices = 0;
    for (unsigned groups = 0; groups < 1u << G; ++groups) {
        if (__builtin_popcount(groups) != M) continue;
        std::vector<int> pool;
        for (int e = 0; e < E; ++e)
            if (groups >> (e / per_group) & 1) pool.push_back(e);
        for (unsigned pick = 0; pick < 1u << pool.size(); ++pick) {
            if (__builtin_popcount(pick) != k) continue;
            unsigned ranks = 0;
            for (size_t i = 0; i < pool.size(); ++i)
                if (pick >> i & 1) ranks |= 1u << (pool[i] / per_rank);
            total += __builtin_popcount(ranks);
            choices += 1;
        }
    }
    return total / choices;
}

}  // namespace

TEST_CASE("the ranks a token reaches match an enumeration of its choices", "[unit]") {
    struct Layout {
        int E, G, M, k, ep;
    };
    // Ranks of several groups, groups of several ranks, groups across rank
    // boundaries, and no groups.
    for (const Layout& l : {Layout{8, 8, 4, 2, 4}, Layout{16, 4, 2, 4, 8}, Layout{24, 6, 2, 3, 8},
                            Layout{12, 4, 3, 2, 3}, Layout{16, 1, 1, 3, 4}, Layout{8, 4, 4, 2, 2}}) {
        ModelConfig m = medium();
        m.moe.num_experts = l.E;
        m.moe.groups = l.G;
        m.moe.group_limit = l.G > 1 ? l.M : 0;
        m.moe.top_k = l.k;
        INFO("E " << l.E << " G " << l.G << " M " << l.M << " k " << l.k << " ep " << l.ep);
        REQUIRE(ranks_per_token(m, l.ep) == Approx(ranks_by_enumeration(l.E, l.G, l.M, l.k, l.ep)).epsilon(1e-12));
    }
}

TEST_CASE("the ep step: experts scaled by the load, optimizer by the local parameters, links added", "[unit]") {
    const ModelConfig m = medium();
    const OneGpuStep one{0.150, 0.090, 0.010, 16384};
    const NodeLinks links;  // 370 and 480 GB/s
    const EpStepEstimate e = estimate_ep_step(m, one, 8, 1.2, 0.9, 140e6, links);
    REQUIRE(e.experts_s == Approx(0.108));
    REQUIRE(e.optimizer_s == Approx(0.010 * (1 - 0.9 * 7 / 8)));  // 1/8 of the experts, all the rest
    // 16384 tokens x 196896 bytes, 7/8 of them to other GPUs, at 370 GB/s.
    REQUIRE(e.all_to_all_s == Approx(16384.0 * 196896 * 7 / 8 / 370e9));
    // Ring-equivalent all-reduce: 2 (n-1)/n of the buffer at 480 GB/s.
    REQUIRE(e.all_reduce_s == Approx(140e6 * 2 * 7 / 8 / 480e9));
    REQUIRE(e.step_s == Approx(0.150 - 0.090 - 0.010 + e.experts_s + e.optimizer_s + e.all_to_all_s + e.all_reduce_s));
    REQUIRE(e.step_s == Approx(0.16825).epsilon(1e-4));

    // Twice the bandwidth halves the links' time and nothing else.
    const EpStepEstimate fast = estimate_ep_step(m, one, 8, 1.2, 0.9, 140e6, NodeLinks{740, 960});
    REQUIRE(fast.all_to_all_s == Approx(e.all_to_all_s / 2));
    REQUIRE(fast.all_reduce_s == Approx(e.all_reduce_s / 2));
    REQUIRE(fast.experts_s == e.experts_s);
    // Two GPUs: half the rows leave, half the experts' state stays.
    const EpStepEstimate two = estimate_ep_step(m, one, 2, 1.0, 0.9, 140e6, links);
    REQUIRE(two.all_to_all_s == Approx(16384.0 * all_to_all_bytes_per_token(m, 2) / 2 / 370e9));
    REQUIRE(two.optimizer_s == Approx(0.010 * (1 - 0.9 / 2)));
    REQUIRE(two.experts_s == one.experts_s);
}

TEST_CASE("the ep estimate refuses a layout or times that cannot be", "[unit]") {
    const ModelConfig m = medium();
    const OneGpuStep one{0.150, 0.090, 0.010, 16384};
    const NodeLinks links;
    REQUIRE_NOTHROW(estimate_ep_step(m, one, 4, 1.0, 0.9, 0, links));
    REQUIRE_THROWS_AS(estimate_ep_step(m, one, 1, 1.0, 0.9, 0, links), std::invalid_argument);
    REQUIRE_THROWS_AS(estimate_ep_step(m, one, 3, 1.0, 0.9, 0, links), std::invalid_argument);  // 8 experts
    REQUIRE_THROWS_AS(estimate_ep_step(m, one, 8, 0.9, 0.9, 0, links), std::invalid_argument);
    REQUIRE_THROWS_AS(estimate_ep_step(m, one, 8, 1.0, 1.5, 0, links), std::invalid_argument);
    REQUIRE_THROWS_AS(estimate_ep_step(m, OneGpuStep{0.1, 0.09, 0.02, 16384}, 8, 1.0, 0.9, 0, links),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(estimate_ep_step(m, one, 8, 1.0, 0.9, 0, NodeLinks{0, 480}), std::invalid_argument);
}

TEST_CASE("the gradients reduced after the backward: the first layer's and those of no layer or the head",
          "[unit]") {
    for (bool shared : {true, false}) {
        for (bool tied : {true, false}) {
            ModelConfig mc = test::tiny_model();
            mc.dynamics.shared = shared;
            mc.tie_embeddings = tied;
            CpuOps ops;
            Model model(mc, ops, Precision(DType::F32), 1, 4);
            size_t want = 0;
            for (const Param& p : model.params().all()) {
                const bool later_layer = p.name.rfind("layers.", 0) == 0 && p.name.rfind("layers.0.", 0) != 0;
                const bool head = p.name == "norm.weight" || p.name == "lm_head.weight";
                if (!p.is_expert_stack() && !later_layer && !head) want += size_t(p.numel()) * sizeof(float);
            }
            INFO("shared dynamics " << shared << ", tied embeddings " << tied);
            REQUIRE(want > size_t(mc.vocab_size * mc.hidden_size) * sizeof(float));  // the embedding and more
            REQUIRE(tail_reduce_bytes(model) == want);
        }
    }
}

TEST_CASE("moe-bench refuses an ep estimate it cannot make, with one line", "[unit]") {
    const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";  // 4 experts
    const auto refused = [&](std::vector<std::string> args, const std::string& why) {
        args.insert(args.begin(), {"--config", tiny});
        const test::ProgramResult r = test::run_program(MOE_BENCH_TOOL, args);
        INFO(r.output);
        REQUIRE(r.exit_code == 2);
        REQUIRE(test::contains(r.output, "moe-bench: " + why));
        REQUIRE(!test::contains(r.output, "step time"));  // stopped before any step
    };
    refused({"--estimate-ep", "1"}, "--estimate-ep takes an integer >= 2, got '1'");
    refused({"--estimate-ep", "3"}, "--estimate-ep 3 does not divide the 4 experts");
    refused({"--estimate-ep", "2", "--phase-steps", "0"}, "--estimate-ep needs the phase pass");
    refused({"--estimate-ep", "2", "--a2a-gbps", "0"}, "--a2a-gbps takes a number > 0, got '0'");
    refused({"--estimate-ep", "2", "--allreduce-gbps", "fast"}, "--allreduce-gbps takes a number > 0, got 'fast'");
}

TEST_CASE("moe-bench refuses --gemm-candidates without cuBLASLt, with one line", "[unit]") {
    const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
    const auto refused = [&](const std::string& count, const std::string& why) {
        const test::ProgramResult r = test::run_program(
            MOE_BENCH_TOOL, {"--config", tiny, "--set", "run.device=cpu", "--gemm-candidates", count});
        INFO(r.output);
        REQUIRE(r.exit_code == 2);
        REQUIRE(test::contains(r.output, "moe-bench: " + why));
        REQUIRE(!test::contains(r.output, "step time"));  // stopped before any step
    };
    refused("1", "--gemm-candidates takes an integer >= 2, got '1'");
    refused("4", "--gemm-candidates times cuBLASLt's algorithms: give run.device cuda (this run is on ");
}
