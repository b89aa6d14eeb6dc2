// Memory is planned from the config: the model allocates everything at
// construction, after sizing it against what the device (or the machine) has:
// a run too large stops at once with the plan's numbers.
#include <limits>

#include "engine/model/memory_plan.h"
#include "engine/model/model.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/test_models.h"

using namespace moe;

namespace {

// The CPU backend with a small "device": an allocation past `capacity` fails
// as a GPU's would, and every allocation is counted.
class SmallDeviceOps : public CpuOps {
public:
    explicit SmallDeviceOps(size_t capacity) : capacity_(capacity) {}
    size_t memory_available() const override { return capacity_ - used_; }
    void* alloc(size_t bytes) override {
        if (used_ + bytes > capacity_) throw OutOfDeviceMemory(bytes, capacity_ - used_, capacity_, "test device");
        used_ += bytes;
        ++allocations_;
        return CpuOps::alloc(bytes);
    }
    size_t used() const { return used_; }
    int allocations() const { return allocations_; }

private:
    size_t capacity_, used_ = 0;
    int allocations_ = 0;
};

}  // namespace

TEST_CASE("a model takes its memory at construction and none during a step", "[unit]") {
    SmallDeviceOps ops(std::numeric_limits<size_t>::max());
    const ModelConfig mc = test::tiny_model();
    Model model(mc, ops, Precision(DType::F32), 2, 5);
    model.params().initialize(1);
    const int after_construction = ops.allocations();
    REQUIRE(ops.used() == model.planned_bytes());
    REQUIRE(model.planned_bytes() == model.params().planned_bytes(Precision(DType::F32)).total() + model.activation_bytes());
    std::vector<int32_t> ids(10, 3), targets(10, 4);
    model.forward(ids.data(), targets.data(), 1.0);
    model.backward(Write::overwrite);
    REQUIRE(ops.allocations() == after_construction);
}

TEST_CASE("the mixed precision plan adds a working copy of every weight", "[unit]") {
    CpuOps ops;
    Model model(test::tiny_model(), ops, Precision(DType::F32), 1, 4);
    const size_t n = size_t(model.params().numel()), tensors = model.params().all().size();
    const size_t fp32 = model.params().planned_bytes(Precision(DType::F32)).total();  // value, grad, m, v
    const size_t mixed = model.params().planned_bytes(Precision::mixed_bf16()).total();  // + the bf16 copy
    // Each tensor starts on 256 bytes: at most 252 bytes of padding a tensor and slot.
    REQUIRE(fp32 >= n * 16);
    REQUIRE(fp32 <= n * 16 + 4 * 252 * tensors);
    REQUIRE(mixed - fp32 >= n * 2);
    REQUIRE(mixed - fp32 <= n * 2 + 254 * tensors);
}

TEST_CASE("a device too small for the config is refused before anything is allocated, with the plan's numbers",
          "[unit]") {
    SmallDeviceOps ops(4096);
    const std::string message = test::error_of<ConfigError>([&] { Model(test::tiny_model(), ops, Precision(DType::F32), 2, 5); });
    for (const char* part : {"config: this run needs", "(weights ", ", working copy 0.00, gradients ",
                             ", AdamW moments ", "; activations kept ", " and scratch ",
                             "for train.micro_batch_size 2 x train.seq_len 5",
                             "but this machine has 0.00 GiB available", "lower train.micro_batch_size",
                             "parallel.shard_optimizer", "train.recompute", "parallel.expert_parallel",
                             "moe-train --plan"}) {
        INFO(message << " should mention " << part);
        REQUIRE(test::contains(message, part));
    }
    REQUIRE(ops.allocations() == 0);

    // A plan that fits is allocated whole, and is what the model says it plans.
    SmallDeviceOps roomy(std::numeric_limits<size_t>::max());
    const Model model(test::tiny_model(), roomy, Precision(DType::F32), 2, 5);
    REQUIRE(roomy.used() == model.planned_bytes());
}

TEST_CASE("sizes that cannot be allocated are refused at once, naming the keys, not after allocating", "[unit]") {
    CpuOps ops;  // this machine's RAM
    const auto refused = [&](ModelConfig m) {
        return test::error_of<ConfigError>([&] { Model(m, ops, Precision(DType::F32), 4, 128); });
    };
    ModelConfig huge_vocab = test::tiny_model();
    huge_vocab.vocab_size = 2000000000;
    CHECK(test::contains(refused(huge_vocab), "config: this run needs"));
    CHECK(test::contains(refused(huge_vocab), "GiB available"));
    ModelConfig huge_hidden = test::tiny_model();
    huge_hidden.hidden_size = 1 << 30;
    huge_hidden.num_heads = 1 << 24;
    huge_hidden.num_kv_heads = 1 << 24;
    huge_hidden.moe.expert_hidden_size = 1 << 30;
    CHECK(refused(huge_hidden) == "config: this model's buffers would take more than 2^64 bytes: lower "
                                  "model.hidden_size, model.vocab_size, model.num_layers or the experts' sizes");
}

TEST_CASE("shared experts add their parameters, all active, and their activations to the plan", "[unit]") {
    const ModelConfig routed = test::tiny_model();
    ModelConfig shared = routed;
    shared.moe.shared_experts = 2;
    shared.moe.shared_expert_hidden_size = 5;
    const int64_t L = routed.num_layers, H = routed.hidden_size, inner = 2 * 5, N = 2 * 5;
    const double added = double(L * 3 * H * inner);
    const ParameterCounts a = count_parameters(routed), b = count_parameters(shared);
    CHECK(b.total - a.total == added);
    CHECK(b.active - a.active == added);  // every token passes through them
    CpuOps ops;
    const auto plan = [&](const ModelConfig& m, Recompute r) {
        ModelOptions options;
        options.recompute = r;
        options.memory = ModelOptions::Memory::plan_only;
        return Model(m, ops, DType::F32, 2, 5, options);
    };
    const Model kept0 = plan(routed, Recompute::none), kept = plan(shared, Recompute::none);
    CHECK(kept.parameter_bytes().masters - kept0.parameter_bytes().masters >= size_t(added * 4));
    // gate, up and the SwiGLU [N, n I_s] kept in every layer, their gradients in scratch.
    const size_t inner_bytes = size_t(3 * N * inner * 4);
    CHECK(kept.saved_activation_bytes() - kept0.saved_activation_bytes() >= size_t(L) * inner_bytes);
    CHECK(kept.scratch_bytes() - kept0.scratch_bytes() >= inner_bytes);
    // Recomputed with the routed experts' (train.recompute experts): nothing more kept.
    const Model again0 = plan(routed, Recompute::experts), again = plan(shared, Recompute::experts);
    CHECK(again.saved_activation_bytes() == again0.saved_activation_bytes());
    CHECK(again.scratch_bytes() - again0.scratch_bytes() >= 2 * inner_bytes);
}
