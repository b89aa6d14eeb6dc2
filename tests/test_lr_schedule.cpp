// Learning-rate schedules (train/lr_schedule, docs/MODEL-OPTIONS.md): linear
// warmup, then cosine, constant or warmup-stable-decay with its three decay
// shapes (the config keys are checked in test_config).
#include <cmath>

#include "engine/config/config.h"
#include "engine/train/lr_schedule.h"
#include "tests/catch.h"

using namespace moe;

namespace {

OptimizerConfig schedule(LrSchedule kind, DecayShape shape = DecayShape::linear) {
    OptimizerConfig c;
    c.lr = 1.0;
    c.min_lr = 0.1;
    c.warmup_steps = 10;
    c.schedule = kind;
    c.decay_fraction = 0.2;
    c.decay_shape = shape;
    return c;
}

}  // namespace

TEST_CASE("every schedule warms up linearly to lr", "[unit]") {
    for (LrSchedule kind : {LrSchedule::cosine, LrSchedule::constant, LrSchedule::wsd}) {
        CAPTURE(name_of(kind));
        const OptimizerConfig c = schedule(kind);
        CHECK(learning_rate(c, 0, 100) == Approx(0.1));
        CHECK(learning_rate(c, 4, 100) == Approx(0.5));
        CHECK(learning_rate(c, 9, 100) == 1.0);
    }
}

TEST_CASE("cosine decays from lr to min_lr over the steps after warmup", "[unit]") {
    const OptimizerConfig c = schedule(LrSchedule::cosine);
    CHECK(learning_rate(c, 10, 110) == 1.0);
    CHECK(learning_rate(c, 60, 110) == Approx(0.55));  // half way: the mean of lr and min_lr
    CHECK(learning_rate(c, 35, 110) == Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4))));
    CHECK(learning_rate(c, 109, 110) > 0.1);
    CHECK(learning_rate(c, 109, 110) < 0.1 + 1e-3);
}

TEST_CASE("constant holds lr after warmup", "[unit]") {
    const OptimizerConfig c = schedule(LrSchedule::constant);
    for (int step : {10, 50, 99}) CHECK(learning_rate(c, step, 100) == 1.0);
}

TEST_CASE("warmup-stable-decay holds lr, then decays to min_lr over the last steps in its shape", "[unit]") {
    // 100 steps: decay over the last 20 (steps 80 to 99), reaching min_lr at step 99.
    for (DecayShape shape : {DecayShape::linear, DecayShape::sqrt, DecayShape::cosine}) {
        CAPTURE(name_of(shape));
        const OptimizerConfig c = schedule(LrSchedule::wsd, shape);
        CHECK(learning_rate(c, 10, 100) == 1.0);
        CHECK(learning_rate(c, 79, 100) == 1.0);
        CHECK(learning_rate(c, 99, 100) == Approx(0.1));
        double before = 1.0;
        for (int step = 80; step < 100; ++step) {  // falls every step
            CHECK(learning_rate(c, step, 100) < before);
            before = learning_rate(c, step, 100);
        }
    }
    // Half way through the decay (step 89: progress 10/20).
    CHECK(learning_rate(schedule(LrSchedule::wsd, DecayShape::linear), 89, 100) == Approx(0.55));
    CHECK(learning_rate(schedule(LrSchedule::wsd, DecayShape::sqrt), 89, 100) == Approx(0.1 + 0.9 * (1 - std::sqrt(0.5))));
    CHECK(learning_rate(schedule(LrSchedule::wsd, DecayShape::cosine), 89, 100) == Approx(0.55));
    // A longer run moves the decay, not the stable rate: resuming with more
    // train.steps continues at lr.
    CHECK(learning_rate(schedule(LrSchedule::wsd), 90, 200) == 1.0);
}
