// moe-plot's expert figure: heatmap cells in the scale's colour at 8 and 64
// experts, the telemetry read from metrics lines (and refused when
// misshapen), the load over intervals weighted by their slots, and the tool
// on runs it trains here.
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/files.h"
#include "engine/io/metrics.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"
#include "tools/expert_figure.h"
#include "tools/heatmap.h"
#include "tools/raster.h"

using namespace moe;
using moe::test::contains;

namespace {

// A telemetry line of L layers x E experts: expert e's share grows with e.
MetricsLine telemetry_line(long step, long steps, int L, int E, double slots) {
    std::vector<std::vector<double>> share(static_cast<size_t>(L), std::vector<double>(static_cast<size_t>(E)));
    for (auto& row : share)
        for (int e = 0; e < E; ++e) row[size_t(e)] = 2.0 * (e + 1) / (double(E) * (E + 1));
    const std::vector<double> per_layer(size_t(L), slots);
    return {{"step", double(step)},
            {"interval_steps", double(steps)},
            {"expert_share", share},
            {"layer_slots", per_layer},
            {"layer_dropped", std::vector<double>(size_t(L), 0.0)},
            {"layer_balance_loss", std::vector<double>(size_t(L), 0.01)},
            {"layer_z_loss", std::vector<double>(size_t(L), 0.0)}};
}

uint32_t png_dimension(const std::string& file, size_t at) {
    const std::string data = read_small_file(file, 64 << 20);
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | uint8_t(data[16 + at + i]);
    return v;
}

}  // namespace

TEST_CASE("the heat scale runs from blue through white to red, clamped at its ends", "[unit]") {
    CHECK(heat_color(1, 0, 1, 2) == Rgb{255, 255, 255});
    CHECK(heat_color(0, 0, 1, 2) == Rgb{33, 102, 172});
    CHECK(heat_color(-5, 0, 1, 2) == Rgb{33, 102, 172});
    CHECK(heat_color(2, 0, 1, 2) == Rgb{178, 24, 43});
    CHECK(heat_color(9, 0, 1, 2) == Rgb{178, 24, 43});
    CHECK(heat_color(std::nan(""), 0, 1, 2) == Rgb{200, 200, 200});
    const Rgb half = heat_color(1.5, 0, 1, 2);
    CHECK(half.r > 178);
    CHECK(half.g < 255);
    CHECK(label_every(30, 20) == 1);
    CHECK(label_every(9, 20) == 5);   // 2 cells are 18 pixels: too close
    CHECK(label_every(1, 250) == 500);
}

TEST_CASE("heatmap cells take their value's colour at 8 and at 64 experts", "[unit]") {
    for (int experts : {8, 64}) {
        CAPTURE(experts);
        Heatmap map{"load", "layer", "expert", {}, 0, 1, 2};
        for (int l = 0; l < 12; ++l) {
            map.values.emplace_back();
            for (int e = 0; e < experts; ++e) map.values.back().push_back(double((l * 7 + e * 3) % 11) / 5.0);
        }
        map.values[3][5] = std::nan("");
        Canvas canvas(1600, 700, {255, 255, 255});
        const HeatmapArea a = draw_heatmap(canvas, 24, 24, 1576, 676, map);
        CHECK(a.cell_w >= 20);  // 64 experts still get cells wide enough to see
        CHECK(a.cell_h >= 40);
        for (int l = 0; l < 12; ++l)
            for (int e = 0; e < experts; ++e)
                REQUIRE(canvas.at(a.centre_x(e), a.centre_y(l)) == heat_color(map.values[l][e], 0, 1, 2));
    }
}

TEST_CASE("expert telemetry is read from metrics lines, misshapen lines refused", "[unit]") {
    std::vector<MetricsLine> lines = {{{"step", 1}, {"loss", 3}}, telemetry_line(1, 1, 2, 4, 100),
                                      {{"step", 2}, {"loss", 2}}, telemetry_line(10, 9, 2, 4, 900)};
    std::vector<ExpertInterval> ivs = expert_intervals(lines, 0);
    REQUIRE(ivs.size() == 2);
    CHECK(ivs[1].first_step == 2);
    CHECK(ivs[1].step == 10);
    CHECK(ivs[1].share[1] == std::vector<double>{0.1, 0.2, 0.3, 0.4});
    CHECK(expert_intervals(lines, 2).size() == 1);  // --from
    CHECK(interval_at(ivs, 1) == 0);
    CHECK(interval_at(ivs, 5) == 1);
    CHECK(interval_at(ivs, 11) == -1);

    // The load over both: slot-weighted, in multiples of a balanced share.
    ivs[0].share[0] = {1, 0, 0, 0};
    const std::vector<std::vector<double>> load = relative_load(ivs);
    CHECK(load[0][0] == Approx((1.0 * 100 + 0.1 * 900) / 1000 * 4));
    CHECK(load[1][3] == Approx(0.4 * 4));

    MetricsLine bad = telemetry_line(20, 10, 2, 4, 100);
    bad[3].second = std::vector<double>{1, 2, 3};
    lines.push_back(bad);
    CHECK(contains(moe::test::error_of<DataError>([&] { expert_intervals(lines, 0); }),
                   "the expert telemetry of step 20 has no list 'layer_slots' of 2 layers"));
    lines.back() = telemetry_line(20, 10, 3, 4, 100);
    CHECK(contains(moe::test::error_of<DataError>([&] { expert_intervals(lines, 0); }),
                   "has 3 x 4 layers x experts, step 1 had 2 x 4: not one model's run"));
}

TEST_CASE("the expert figure draws the load heatmaps and the per-layer charts", "[unit]") {
    const std::vector<MetricsLine> lines = {telemetry_line(5, 5, 4, 8, 500), telemetry_line(10, 5, 4, 8, 500)};
    const std::vector<ExpertInterval> ivs = expert_intervals(lines, 0);
    Canvas canvas(1600, 1200, {255, 255, 255});
    // Over both intervals and at the first; the balance loss is the one chart
    // with a nonzero value.
    CHECK(draw_expert_figure(canvas, ivs, {0}) == 3);
    Canvas one(1600, 1200, {255, 255, 255});
    CHECK(draw_expert_figure(one, {ivs[0]}, {0}) == 2);  // one interval: one heatmap
}

TEST_CASE("moe-plot draws the expert telemetry of runs it trains, at 8 and 64 experts", "[unit]") {
    for (int experts : {8, 64}) {
        CAPTURE(experts);
        Config c = moe::test::small_config("plot-experts-" + std::to_string(experts));
        c.model.moe.num_experts = experts;
        c.model.moe.capacity_factor = 1.0;
        c.train.steps = 6;
        c.log.every = 2;
        c.log.starved_share = 0;
        CpuOps ops;
        spdlog::set_level(spdlog::level::warn);
        train(c, ops);
        spdlog::set_level(spdlog::level::info);
        const std::string run = c.run.out_dir;
        moe::test::ProgramResult r = moe::test::run_program(MOE_PLOT_TOOL, {run, "--experts-at", "1,4"});
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        CHECK(contains(r.output, run + "/metrics-experts.png: expert telemetry of 4 log intervals, 2 layers x " +
                                     std::to_string(experts) + " experts, "));
        CHECK(png_dimension(run + "/metrics-experts.png", 0) == 1600);
        CHECK(png_dimension(run + "/metrics-experts.png", 4) == 1200);

        r = moe::test::run_program(MOE_PLOT_TOOL, {run, "--experts-at", "7"});
        CHECK(r.exit_code == 2);
        CHECK(contains(r.output, "--experts-at 7: '" + run + "/metrics.jsonl' has expert telemetry for steps 1 to 6 only"));
        r = moe::test::run_program(MOE_PLOT_TOOL, {run, "--experts-at", "3,x"});
        CHECK(r.exit_code == 2);
        CHECK(contains(r.output, "--experts-at takes steps >= 1 separated by commas, e.g. 100,500, got '3,x'"));
    }
}
