// The training loop end to end on synthetic shards: determinism, gradient
// accumulation, learning, and the non-finite loss policy.
#include <cmath>
#include <filesystem>
#include <string>

#include "engine/model.h"
#include "engine/rng.h"
#include "engine/shards.h"
#include "engine/trainer.h"
#include "engine/weights_io.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

// A directory of shards holding a repeating pattern with noise: learnable.
std::string make_data(const std::string& name) {
    const std::string dir = moe::test::fresh_dir("trainer", name);
    Rng rng(5);
    std::vector<uint32_t> tokens(6000);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = rng.uniform() < 0.1 ? rng.next() % 16 : (i * 7) % 13;
    write_shard(dir + "/train_000000.bin", tokens, 1);
    tokens.resize(1200);
    write_shard(dir + "/val_000000.bin", tokens, 2);
    return dir;
}

Config small_config(const std::string& name) {
    Config c;
    const std::string data = make_data(name);
    c.data.train = data + "/train_*.bin";
    c.data.val = data + "/val_*.bin";
    c.model.vocab_size = 16;
    c.model.hidden_size = 32;
    c.model.num_layers = 2;
    c.model.num_heads = 4;
    c.model.num_kv_heads = 2;
    c.model.moe.num_experts = 3;
    c.model.moe.expert_hidden_size = 48;
    c.model.dynamics.controller_size = 16;
    c.train.seq_len = 16;
    c.train.micro_batch_size = 4;
    c.train.steps = 6;
    c.optimizer.warmup_steps = 2;
    c.eval.every = 3;
    c.eval.batches = 2;
    c.log.every = 100;
    c.run.out_dir = data + "/run";
    return c;
}

}  // namespace

TEST_CASE("the same seed gives bit-identical losses", "[unit]") {
    Config c = small_config("determinism");
    CpuOps ops;
    const TrainSummary a = train(c, ops);
    c.run.out_dir += "-again";
    const TrainSummary b = train(c, ops);
    REQUIRE(a.losses.size() == 6);
    REQUIRE(a.losses == b.losses);  // exact, not approximate
    REQUIRE(a.val_loss == b.val_loss);
    c.run.seed = 99;
    c.run.out_dir += "-seed99";
    const TrainSummary other = train(c, ops);
    REQUIRE(other.losses != a.losses);
}

TEST_CASE("gradient accumulation matches one larger micro-batch", "[unit]") {
    // Without the aux losses (nonlinear in the batch's routing statistics),
    // two micro-batches of 2 accumulate the gradient of one batch of 4.
    Config c = small_config("accumulation");
    c.model.moe.load_balancing_weight = 0;
    c.model.moe.z_loss_weight = 0;
    CpuOps ops;
    const TrainSummary one = train(c, ops);
    c.train.micro_batch_size = 2;
    c.train.grad_accum_steps = 2;
    c.run.out_dir += "-accumulated";
    const TrainSummary two = train(c, ops);
    REQUIRE(one.losses.size() == two.losses.size());
    for (size_t i = 0; i < one.losses.size(); ++i) REQUIRE(two.losses[i] == Approx(one.losses[i]).epsilon(1e-5));
}

TEST_CASE("training lowers the loss", "[unit]") {
    Config c = small_config("learning");
    c.train.steps = 40;
    c.eval.every = 0;
    CpuOps ops;
    const TrainSummary s = train(c, ops);
    REQUIRE(s.losses.back() < s.losses.front() - 0.5);
    REQUIRE(s.val_loss < std::log(16.0));  // below a uniform guess
    REQUIRE(fs::exists(c.run.out_dir + "/metrics.jsonl"));
    REQUIRE(fs::exists(c.run.out_dir + "/checkpoints/latest"));
}

TEST_CASE("a non-finite loss stops the run or is skipped, as configured", "[unit]") {
    Config c = small_config("nan");
    CpuOps ops;
    // Weights with a NaN in the embedding: every loss is NaN.
    const std::string weights = c.run.out_dir + "_nan.safetensors";
    {
        Model m(c.model, ops, DType::F32, 1, 1);
        m.params().initialize(1);
        m.params().all().front().value.ptr<float>()[0] = std::nanf("");
        save_tensors(weights, m.params().named(ParameterSet::Slot::Value), ops);
    }
    TrainOptions opts;
    opts.init_from = weights;
    const std::string stop = moe::test::error_of<TrainingError>([&] { train(c, ops, opts); });
    REQUIRE(moe::test::contains(stop, "not finite"));
    REQUIRE(moe::test::contains(stop, "run.nan_policy=skip"));
    c.run.nan_policy = "skip";
    c.train.steps = 20;
    const std::string skip = moe::test::error_of<TrainingError>([&] { train(c, ops, opts); });
    REQUIRE(moe::test::contains(skip, "10 non-finite steps in a row"));
}
