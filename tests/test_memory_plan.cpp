// Memory is planned from the config: the model allocates everything at
// construction, and a device too small for it stops with the plan's numbers.
#include <limits>

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
    REQUIRE(ops.used() >= model.params().planned_bytes(Precision(DType::F32)) + model.activation_bytes());
    std::vector<int32_t> ids(10, 3), targets(10, 4);
    model.forward(ids.data(), targets.data());
    model.backward(1.0, Write::overwrite);
    REQUIRE(ops.allocations() == after_construction);
}

TEST_CASE("the mixed precision plan adds a working copy of every weight", "[unit]") {
    CpuOps ops;
    Model model(test::tiny_model(), ops, Precision(DType::F32), 1, 4);
    const int64_t n = model.params().numel();
    REQUIRE(model.params().planned_bytes(Precision(DType::F32)) == size_t(n) * 16);   // value, grad, m, v
    REQUIRE(model.params().planned_bytes(Precision::mixed_bf16()) == size_t(n) * 18);  // + the bf16 copy
}

TEST_CASE("a device too small for the config stops at construction with the plan's numbers", "[unit]") {
    SmallDeviceOps ops(4096);
    const std::string message = test::error_of<ConfigError>([&] { Model(test::tiny_model(), ops, Precision(DType::F32), 2, 5); });
    for (const char* part : {"out of GPU memory", "parameters", "activations of train.micro_batch_size 2 x train.seq_len 5",
                             "Lower train.micro_batch_size", "parallel.expert_parallel"}) {
        INFO(message << " should mention " << part);
        REQUIRE(test::contains(message, part));
    }
}
