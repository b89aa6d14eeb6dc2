// Recomputation (train.recompute) trades memory for compute, nothing else:
// the gradients, loss and aux of a step are the bits of the run that keeps
// every activation, over micro-batches accumulated, every routing and
// dynamics variant; and the plan keeps fewer bytes of activations.
#include <cstring>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_models.h"

using namespace moe;
using moe::test::Variant;

namespace {

struct StepBits {
    std::vector<double> results;               // loss and aux of each micro-batch
    std::vector<std::vector<char>> gradients;  // every parameter's, as bytes
};

// Two micro-batches of B=2, T=6 accumulated, in F32 (the bits a run keeps).
StepBits step(const ModelConfig& cfg, Recompute recompute) {
    CpuOps ops;
    ModelOptions options;
    options.recompute = recompute;
    Model model(cfg, ops, DType::F32, 2, 6, options);
    model.params().initialize(5);
    Rng rng(21, "recompute batches");
    StepBits out;
    for (int m = 0; m < 2; ++m) {
        std::vector<int32_t> inputs(12), targets(12);
        for (int32_t& t : inputs) t = int32_t(rng.next() % uint64_t(cfg.vocab_size));
        for (int32_t& t : targets) t = int32_t(rng.next() % uint64_t(cfg.vocab_size));
        const ForwardResult r = model.forward(inputs.data(), targets.data(), 0.5);
        out.results.push_back(r.loss);
        out.results.push_back(r.aux);
        model.backward(m == 0 ? Write::overwrite : Write::add);
    }
    for (const Param& p : model.params().all()) {
        const char* bytes = static_cast<const char*>(p.grad.data);
        out.gradients.emplace_back(bytes, bytes + p.grad.bytes());
    }
    return out;
}

}  // namespace

TEST_CASE("recomputed activations give the gradients of kept ones, bit for bit", "[unit]") {
    const std::vector<Variant> variants = {
        {"learned top-2, shared dynamics", [](ModelConfig&) {}},
        {"token_id router", [](ModelConfig& m) {
             m.moe.router = moe::RouterKind::token_id;
             m.moe.top_k = 1;
         }},
        {"capacity with drops", [](ModelConfig& m) { m.moe.capacity_factor = 0.5; }},
        {"dynamics per layer, qk-norm", [](ModelConfig& m) {
             m.dynamics.shared = false;
             m.qk_norm = true;
         }},
        {"dynamics off, tied embeddings", [](ModelConfig& m) {
             m.dynamics.enabled = false;
             m.tie_embeddings = true;
         }},
        {"two shared experts", [](ModelConfig& m) {
             m.moe.shared_experts = 2;
             m.moe.shared_expert_hidden_size = 4;
         }},
    };
    for (const Variant& v : variants) {
        SECTION(v.name) {
            ModelConfig cfg = moe::test::tiny_model();
            v.apply(cfg);
            const StepBits kept = step(cfg, Recompute::none);
            for (Recompute r : {Recompute::experts, Recompute::full}) {
                INFO("recompute " << name_of(r));
                const StepBits again = step(cfg, r);
                REQUIRE(again.results == kept.results);
                REQUIRE(again.gradients.size() == kept.gradients.size());
                for (size_t i = 0; i < kept.gradients.size(); ++i) REQUIRE(again.gradients[i] == kept.gradients[i]);
            }
        }
    }
}

TEST_CASE("recomputation shrinks the activations the plan keeps", "[unit]") {
    ModelConfig cfg = moe::test::tiny_model();
    cfg.num_layers = 4;
    CpuOps ops;
    const auto plan = [&](Recompute r) {
        ModelOptions options;
        options.recompute = r;
        options.memory = ModelOptions::Memory::plan_only;
        return Model(cfg, ops, DType::F32, 8, 64, options);
    };
    const Model none = plan(Recompute::none), experts = plan(Recompute::experts), full = plan(Recompute::full);
    // Experts: the three [rows, I] inner activations of every layer leave
    // what is kept, and one layer's set joins the scratch.
    const int64_t rows = 8 * 64 * cfg.moe.top_k, inner = 3 * rows * cfg.moe.expert_hidden_size * 4;
    CHECK(none.saved_activation_bytes() - experts.saved_activation_bytes() >= size_t(cfg.num_layers * inner));
    CHECK(experts.scratch_bytes() - none.scratch_bytes() >= size_t(inner));
    CHECK(experts.activation_bytes() < none.activation_bytes());
    // Full: one block's activations kept instead of every block's.
    CHECK(full.saved_activation_bytes() < experts.saved_activation_bytes());
    CHECK(full.activation_bytes() < experts.activation_bytes());
    CHECK(full.parameter_bytes().total() == none.parameter_bytes().total());
}
