// The training loop end to end on synthetic shards: determinism, gradient
// accumulation, learning, and the non-finite loss policy.
#include <cmath>
#include <filesystem>
#include <string>

#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "engine/io/files.h"
#include "engine/train/trainer.h"
#include "engine/io/weights_io.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;
namespace fs = std::filesystem;

TEST_CASE("the same seed gives bit-identical losses", "[unit]") {
    Config c = moe::test::small_config("determinism");
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
    Config c = moe::test::small_config("accumulation");
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
    Config c = moe::test::small_config("learning");
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
    Config c = moe::test::small_config("nan");
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

TEST_CASE("an evaluation longer than one pass over the validation data is refused with the most it can be",
          "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("eval-too-long");  // 1200 validation tokens: 74 sequences of 16
    c.eval.batches = 19;                                 // x 4 sequences: 76
    const std::string message = test::error_of<ConfigError>([&] { train(c, ops); });
    CHECK(message == "config: eval.batches x train.micro_batch_size x train.grad_accum_steps x ranks is 76 "
                     "sequences, more than the 74 of data.val: set eval.batches to at most 18 (one pass over it), or "
                     "add validation data");
    c.eval.batches = 18;
    CHECK(train(c, ops).losses.size() == size_t(c.train.steps));
}
