// Auxiliary-loss-free balancing (docs/MODEL-OPTIONS.md "Auxiliary-loss-free
// balancing"): the expert bias is a state of the model, not a trained
// parameter; it moves by the rate against each expert's load after every
// step, steers the choice of experts, and is saved, restored and frozen
// across resumes.
#include <spdlog/spdlog.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/io/weights_io.h"
#include "engine/model/model.h"
#include "engine/moe/learned_router.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/host_values.h"
#include "tests/test_models.h"
#include "tests/train_fixture.h"

using namespace moe;
using moe::test::host_values;

namespace {

ModelConfig biased_model(double rate) {
    ModelConfig m = moe::test::tiny_model();
    m.moe.num_experts = 4;
    m.moe.expert_bias_rate = rate;
    return m;
}

void check_update(DType dtype) {
    CpuOps ops;
    ParameterSet params;
    LearnedRouter router(biased_model(0.25), params, 0);
    params.allocate(ops, Precision(dtype));
    params.initialize(3);
    Arena acts(ops), scratch(ops);  // sized by a dry carve, then carved for real
    router.carve(acts, scratch, Precision(dtype), 1, {});
    acts.allocate();
    scratch.allocate();
    router.carve(acts, scratch, Precision(dtype), 1, {});
    const Tensor& b = params.find("layers.0.moe.router.expert_bias").value;
    CHECK(host_values(ops, b) == std::vector<double>{0, 0, 0, 0});  // starts at zero
    router.after_step(ops, {5, 3, 3, 1});  // mean 3: the busiest down, the idlest up, the rest stay
    CHECK(host_values(ops, b) == std::vector<double>{-0.25, 0, 0, 0.25});
    router.after_step(ops, {0, 0, 6, 6});
    CHECK(host_values(ops, b) == std::vector<double>{0, 0.25, -0.25, 0});
    router.after_step(ops, {2, 2, 2, 2});  // balanced: nothing moves
    CHECK(host_values(ops, b) == std::vector<double>{0, 0.25, -0.25, 0});
}

// The bias of layer l in a checkpoint's model part.
std::vector<float> saved_bias(const std::string& checkpoint, int layer, int E) {
    SafetensorsFile f(checkpoint + "/model-00000-of-00001.safetensors");
    std::vector<float> b(static_cast<size_t>(E));
    f.read("layers." + std::to_string(layer) + ".moe.router.expert_bias", "F32", {E}, b.data());
    return b;
}

std::string step_dir(const Config& c, int step) {
    char name[32];
    std::snprintf(name, sizeof name, "step-%08d", step);
    return c.run.out_dir + "/checkpoints/" + name;
}

}  // namespace

TEST_CASE("the expert bias moves by the rate against each expert's load, in float and double", "[unit]") {
    check_update(DType::F32);
    check_update(DType::F64);
}

TEST_CASE("the expert bias is a state: saved with the weights, neither trained nor in the moments", "[unit]") {
    CpuOps ops;
    ParameterSet params;
    LearnedRouter router(biased_model(0.001), params, 0);
    params.allocate(ops, Precision(DType::F32));
    for (const Param& p : params.all()) CHECK(p.name != "layers.0.moe.router.expert_bias");
    REQUIRE(params.states().size() == 1);
    CHECK(params.states().front().name == "layers.0.moe.router.expert_bias");
    const auto has = [](const std::vector<NamedTensor>& tensors) {
        for (const NamedTensor& t : tensors)
            if (t.name == "layers.0.moe.router.expert_bias") return true;
        return false;
    };
    CHECK(has(params.named(ParameterSet::Slot::Value)));
    CHECK_FALSE(has(params.named(ParameterSet::Slot::Grad)));
    CHECK_FALSE(has(params.named(ParameterSet::Slot::M)));

    ModelConfig none = biased_model(0.001);
    none.moe.expert_bias_rate.reset();
    ParameterSet no_bias;
    LearnedRouter unbiased(none, no_bias, 0);
    CHECK(no_bias.states().empty());
    CHECK(no_bias.numel() == params.numel());  // the bias is not counted as a parameter
}

TEST_CASE("the expert bias chooses the experts: a large bias on one expert takes every token", "[unit]") {
    CpuOps ops;
    const ModelConfig m = biased_model(0.001);
    const int B = 2, T = 5, N = B * T;
    Model model(m, ops, DType::F32, B, T);
    model.params().initialize(4);
    std::vector<int32_t> ids(N), targets(N);
    for (int i = 0; i < N; ++i) {
        ids[size_t(i)] = i % m.vocab_size;
        targets[size_t(i)] = (i + 1) % m.vocab_size;
    }
    const ForwardResult plain = model.forward(ids.data(), targets.data());
    CHECK(plain.layers[0].routed[2] < N);  // unbiased, expert 2 is not everyone's
    const std::vector<float> bias = {0, 0, 10, 0};  // far above any score difference
    for (Param& p : model.params().states()) ops.copy_from_host(p.value, bias.data());
    const ForwardResult biased = model.forward(ids.data(), targets.data());
    for (const MoeStats& layer : biased.layers) CHECK(layer.routed[2] == N);
    CHECK(biased.loss != plain.loss);
}

TEST_CASE("training moves the expert bias, resumes it bit for bit, and a rate of 0 on resume freezes it", "[unit]") {
    spdlog::set_level(spdlog::level::warn);
    CpuOps ops;
    Config c = moe::test::small_config("expert-bias");
    c.model.moe.expert_bias_rate = 0.01;
    c.model.moe.load_balancing_weight = 0;  // the bias alone balances
    c.train.steps = 6;
    c.checkpoint.every = 3;
    c.checkpoint.keep = 3;
    const TrainSummary run = train(c, ops);
    const int E = c.model.moe.num_experts;
    const std::vector<float> at3 = saved_bias(step_dir(c, 3), 0, E), at6 = saved_bias(step_dir(c, 6), 0, E);
    CHECK(at3 != at6);  // it moves every step
    for (float b : at6) CHECK(std::fabs(b) <= 6 * 0.01f + 1e-6f);

    Config plain = c;
    plain.model.moe.expert_bias_rate.reset();
    plain.run.out_dir += "-plain";
    CHECK(train(plain, ops).losses != run.losses);  // it changes the routing

    TrainOptions from3;
    from3.resume = step_dir(c, 3);
    Config resumed = c;
    resumed.run.out_dir += "-resumed";
    const TrainSummary rest = train(resumed, ops, from3);
    REQUIRE(rest.losses.size() == 3);
    for (size_t i = 0; i < 3; ++i) CHECK(rest.losses[i] == run.losses[3 + i]);  // bit for bit
    CHECK(saved_bias(step_dir(resumed, 6), 0, E) == at6);

    Config frozen = c;
    frozen.model.moe.expert_bias_rate = 0.0;  // a training setting: may change on resume
    frozen.run.out_dir += "-frozen";
    train(frozen, ops, from3);
    CHECK(saved_bias(step_dir(frozen, 6), 0, E) == at3);

    Config dropped = c;
    dropped.model.moe.expert_bias_rate.reset();  // the bias gone: another model
    dropped.run.out_dir += "-dropped";
    CHECK_THROWS_WITH(train(dropped, ops, from3),
                      Catch::Contains("is of another model: model.moe.expert_bias_rate is 0.01 in the checkpoint but "
                                      "null in the config"));
    spdlog::set_level(spdlog::level::info);
}

TEST_CASE("weights without an expert bias start a biased model with the bias at zero, not the reverse", "[unit]") {
    spdlog::set_level(spdlog::level::warn);
    CpuOps ops;
    Config plain = moe::test::small_config("expert-bias-init");
    plain.train.steps = 4;
    const std::string weights = plain.run.out_dir + "-weights.safetensors";
    {
        Model model(plain.model, ops, DType::F32, plain.train.micro_batch_size, plain.train.seq_len);
        model.params().initialize(21);
        save_tensors(weights, model.params().named(ParameterSet::Slot::Value), ops);
    }
    TrainOptions from;
    from.init_from = weights;
    Config biased = plain;
    biased.model.moe.expert_bias_rate = 0.01;
    biased.run.out_dir += "-biased";
    plain.run.out_dir += "-plain";
    const TrainSummary a = train(plain, ops, from), b = train(biased, ops, from);
    REQUIRE(b.losses.size() == 4);
    CHECK(b.losses[0] == a.losses[0]);  // a zero bias chooses as no bias does
    CHECK(b.losses != a.losses);        // then it moves

    // A biased model's weights hold the bias, which a model without one refuses.
    const std::string with_bias = biased.run.out_dir + "-weights.safetensors";
    {
        Model model(biased.model, ops, DType::F32, 1, 1);
        model.params().initialize(21);
        save_tensors(with_bias, model.params().named(ParameterSet::Slot::Value), ops);
    }
    from.init_from = with_bias;
    plain.run.out_dir += "-again";
    CHECK_THROWS_WITH(train(plain, ops, from), Catch::Contains("holds tensor 'layers.0.moe.router.expert_bias' that "
                                                               "this model does not have"));
    spdlog::set_level(spdlog::level::info);
}
