// Every training option that carries state across steps or shapes the
// schedule resumes bit for bit: a run stopped at a checkpoint and continued
// gives the losses of one that never stopped.
#include <spdlog/spdlog.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/train_fixture.h"

using namespace moe;

namespace {

struct Variant {
    std::string name;
    std::function<void(Config&)> set;
};

const std::vector<Variant>& variants() {
    static const std::vector<Variant> v = {
        {"constant", [](Config& c) { c.optimizer.schedule = LrSchedule::constant; }},
        {"sigmoid-groups",
         [](Config& c) {
             c.model.moe.score = RouterScore::sigmoid;
             c.model.moe.z_loss_weight = 0;
             c.model.moe.groups = 3;
             c.model.moe.group_limit = 2;
         }},
        {"global-batch balancing, expert bias",
         [](Config& c) {
             c.model.moe.balance_scope = BalanceScope::global_batch;
             c.model.moe.expert_bias_rate = 0.01;
             c.train.grad_accum_steps = 2;
         }},
        {"shared-experts",
         [](Config& c) {
             c.model.moe.shared_experts = 2;
             c.model.moe.shared_expert_hidden_size = 16;
         }},
        {"wsd-sqrt",
         [](Config& c) {
             c.optimizer.schedule = LrSchedule::wsd;
             c.optimizer.decay_fraction = 0.5;  // the decay starts before the checkpoint
             c.optimizer.decay_shape = DecayShape::sqrt;
         }},
    };
    return v;
}

}  // namespace

TEST_CASE("each option resumes from a checkpoint to the losses of a run that never stopped", "[unit]") {
    spdlog::set_level(spdlog::level::warn);
    for (const Variant& variant : variants()) {
        CAPTURE(variant.name);
        CpuOps ops;
        Config c = moe::test::small_config("resume-" + variant.name);
        c.train.steps = 8;
        c.checkpoint.every = 3;
        c.checkpoint.keep = 3;  // step 3 is still there at the end
        variant.set(c);
        const TrainSummary straight = train(c, ops);
        REQUIRE(straight.losses.size() == 8);

        Config resumed = c;
        resumed.run.out_dir += "-resumed";
        TrainOptions opts;
        opts.resume = c.run.out_dir + "/checkpoints/step-00000003";
        const TrainSummary rest = train(resumed, ops, opts);
        REQUIRE(rest.losses.size() == 5);
        for (size_t i = 0; i < 5; ++i) CHECK(rest.losses[i] == straight.losses[3 + i]);  // bit for bit
        CHECK(rest.val_loss == straight.val_loss);
    }
    spdlog::set_level(spdlog::level::info);
}
