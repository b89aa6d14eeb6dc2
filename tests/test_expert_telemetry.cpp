// Per-expert telemetry (train/expert_telemetry): each layer's expert shares,
// drops and router losses over a log interval, in metrics.jsonl as a run
// writes them, and the warning for an expert that starves.
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "engine/io/metrics.h"
#include "engine/train/expert_telemetry.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;
using moe::test::contains;

namespace {

// A step of two layers of four experts: layer 1's expert 3 gets `starved` slots.
StepTotals step_with(int64_t starved) {
    StepTotals t;
    t.routed = {{10, 20, 30, 40}, {40, 40, 20, starved}};
    t.dropped = {5, 0};
    t.balance_loss = {0.01, 0.03};
    t.z_loss = {0.002, 0.004};
    return t;
}

const MetricValue& field(const MetricsLine& line, const std::string& key) {
    for (const auto& f : line)
        if (f.first == key) return f.second;
    FAIL("no field " << key);
    throw;
}

// Runs train() with its log lines kept.
std::string train_logged(const Config& c) {
    std::ostringstream log;
    const auto previous = spdlog::default_logger();
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("captured", std::make_shared<spdlog::sinks::ostream_sink_mt>(log)));
    CpuOps ops;
    train(c, ops);
    spdlog::set_default_logger(previous);
    return log.str();
}

}  // namespace

TEST_CASE("expert telemetry sums an interval's steps into shares, drops and mean router losses", "[unit]") {
    ExpertTelemetry tel(2, 4, 0, 1);
    tel.add(step_with(100));
    StepTotals second = step_with(100);
    second.balance_loss = {0.03, 0.05};
    second.dropped = {1, 2};
    tel.add(second);
    std::vector<std::string> warnings;
    const MetricsLine line = tel.take(20, warnings);
    CHECK(warnings.empty());
    CHECK(field(line, "step").number() == 20);
    CHECK(field(line, "interval_steps").number() == 2);
    const MetricValue& share = field(line, "expert_share");
    REQUIRE(share.depth == 2);
    CHECK(share.rows[0] == std::vector<double>{0.1, 0.2, 0.3, 0.4});
    CHECK(share.rows[1] == std::vector<double>{0.2, 0.2, 0.1, 0.5});
    CHECK(field(line, "layer_slots") == MetricValue(std::vector<double>{200, 400}));
    CHECK(field(line, "layer_dropped") == MetricValue(std::vector<double>{6, 2}));
    CHECK(field(line, "layer_balance_loss").rows[0] == std::vector<double>{0.02, 0.04});
    CHECK(field(line, "layer_z_loss").rows[0] == std::vector<double>{0.002, 0.004});
    // The next interval starts empty.
    CHECK(tel.empty());
    tel.add(step_with(100));
    CHECK(field(tel.take(30, warnings), "layer_slots") == MetricValue(std::vector<double>{100, 200}));
}

TEST_CASE("an expert below the starving share for N intervals in a row is named once per episode", "[unit]") {
    // Balanced: 25% each; starving below 0.1 of that, 2.5%, for 2 intervals.
    ExpertTelemetry tel(2, 4, 0.1, 2);
    std::vector<std::vector<std::string>> said;
    for (int64_t slots : {2, 2, 0, 50, 1, 0}) {  // 2 of 102 slots is 1.96%: starving
        tel.add(step_with(slots));
        said.emplace_back();
        tel.take(10 * int(said.size()), said.back());
    }
    CHECK(said[0].empty());  // one interval is not yet a pattern
    REQUIRE(said[1].size() == 1);
    CHECK(said[1][0] ==
          "layer 1 expert 3 is starving: 1.96% of the layer's token-slots over steps 20-20 (balanced: 25.00%), below "
          "0.1 of a balanced share for 2 log interval(s) in a row");
    CHECK(said[2].empty());  // still starving: already said
    CHECK(said[3].empty());  // recovered
    CHECK(said[4].empty());
    REQUIRE(said[5].size() == 1);  // starving again, for 2 intervals
    CHECK(contains(said[5][0], "layer 1 expert 3 is starving: 0.00%"));
}

TEST_CASE("a run writes each log interval's expert telemetry, and the router losses apart", "[unit]") {
    Config c = moe::test::small_config("telemetry");
    c.model.moe.capacity_factor = 1.0;  // some slots dropped
    c.model.moe.z_loss_weight = 1e-3;
    c.log.every = 2;
    c.log.starved_share = 0;
    train_logged(c);
    const std::vector<MetricsLine> lines = read_metrics(c.run.out_dir + "/metrics.jsonl");
    const int L = c.model.num_layers, E = c.model.moe.num_experts;
    const double slots_a_step = double(c.train.micro_batch_size) * c.train.seq_len * c.model.moe.top_k;
    std::vector<int> telemetry_steps;
    double dropped = 0, aux = 0;  // the step lines' since the last telemetry line
    int steps = 0;
    double all_dropped = 0;
    for (const MetricsLine& line : lines) {
        const int step = int(field(line, "step").number());
        if (line[1].first == "loss") {
            const double balance = field(line, "balance_loss").number(), z = field(line, "z_loss").number();
            CHECK(balance > 0);
            CHECK(z > 0);
            CHECK(balance + z == Approx(field(line, "aux").number()).epsilon(1e-12));
            dropped += field(line, "dropped").number();
            all_dropped += field(line, "dropped").number();
            aux += field(line, "aux").number();
            ++steps;
        } else if (line[1].first == "interval_steps") {
            telemetry_steps.push_back(step);
            CHECK(field(line, "interval_steps").number() == steps);
            const MetricValue& share = field(line, "expert_share");
            REQUIRE(share.rows.size() == size_t(L));
            double layer_losses = 0, layer_dropped = 0;
            for (int l = 0; l < L; ++l) {
                REQUIRE(share.rows[l].size() == size_t(E));
                double sum = 0;
                for (double s : share.rows[l]) sum += s;
                CHECK(sum == Approx(1).margin(1e-5));  // 6 digits each
                CHECK(field(line, "layer_slots").rows[0][l] == slots_a_step * steps);
                layer_dropped += field(line, "layer_dropped").rows[0][l];
                layer_losses += field(line, "layer_balance_loss").rows[0][l] + field(line, "layer_z_loss").rows[0][l];
            }
            CHECK(layer_dropped == dropped);
            CHECK(layer_losses == Approx(aux / steps).epsilon(1e-5));
            dropped = aux = steps = 0;
        }
    }
    CHECK(all_dropped > 0);
    CHECK(telemetry_steps == std::vector<int>{1, 2, 4, 6});  // the first step, then every log.every
}

TEST_CASE("a run names an expert that starves", "[unit]") {
    Config c = moe::test::small_config("starving");
    c.log.every = 1;
    // Every expert below 99.9% of a balanced share starves at once: some must.
    c.log.starved_share = 0.999;
    c.log.starved_intervals = 1;
    const std::string log = train_logged(c);
    INFO(log);
    CHECK(contains(log, "is starving: "));
    CHECK(contains(log, "of the layer's token-slots over steps 1-1 (balanced: 33.33%), below 0.999 of a balanced "
                        "share for 1 log interval(s) in a row"));
}
