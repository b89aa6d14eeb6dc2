// moe-plot: a run's metrics.jsonl as a PNG of charts (loss, learning rate,
// gradient norm, speed, router losses, expert load), several runs over each
// other to compare them; and each run's expert telemetry as a second PNG.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/io/metrics.h"
#include "engine/io/files.h"
#include "tools/chart.h"
#include "tools/expert_figure.h"
#include "tools/png_writer.h"
#include "tools/tool_args.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: moe-plot RUN [RUN ...] [-o FILE.png] [--from STEP] [--smooth N] [--size WIDTHxHEIGHT]\n"
    "                [--experts-at STEP[,STEP...]]\n"
    "  Draws the metrics a training run logged as charts in a PNG file: training and validation loss,\n"
    "  learning rate, gradient norm, tokens/s, step time, router losses, expert load (max / mean), and\n"
    "  capacity drops and all-to-all time where there are any.\n"
    "  RUN: a run directory (its metrics.jsonl) or a metrics file. Several runs are drawn over each\n"
    "  other, a colour each, to compare them (e.g. the same config on CPU and GPU).\n"
    "  -o FILE.png: where to write (default: metrics.png in the first run's directory, or FILE.png\n"
    "  beside a metrics file FILE.jsonl).\n"
    "  --from STEP: leave out the steps before STEP (the first steps' loss flattens the rest).\n"
    "  --smooth N: draw the training loss as the mean of its last N steps, over the raw loss in a\n"
    "  lighter colour (default 1: raw only).\n"
    "  --size WIDTHxHEIGHT: the picture in pixels (default 1600x1200).\n"
    "  Expert telemetry (moe-train writes it every log.every steps) goes to FILE-experts.png beside\n"
    "  FILE.png (FILE-experts-RUNNAME.png for each of several runs): heatmaps of each layer's expert\n"
    "  load (1: a balanced share) over all steps and at chosen steps, and per-layer charts of the slots\n"
    "  dropped by capacity, the load-balancing loss and the z-loss.\n"
    "  --experts-at STEP[,STEP...]: the steps of the load heatmaps (each in the log interval that\n"
    "  holds it; default: the last interval).\n";

constexpr const char* kProgram = "moe-plot";

struct Args {
    std::vector<std::string> runs;
    std::string out;
    long from = 0, smooth = 1;
    int width = 1600, height = 1200;
    std::vector<long> experts_at;
};

// STEP[,STEP...], each a step >= 1.
std::vector<long> parse_steps(ToolArgs& args, const std::string& text) {
    std::vector<long> steps;
    size_t start = 0;
    while (true) {
        const size_t comma = text.find(',', start);
        const std::string item = text.substr(start, comma - start);
        char* end = nullptr;
        const long step = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos || step < 1 || *end)
            args.fail("--experts-at takes steps >= 1 separated by commas, e.g. 100,500, got '" + text + "'");
        steps.push_back(step);
        if (comma == std::string::npos) return steps;
        start = comma + 1;
    }
}

Args parse(int argc, char** argv) {
    Args a;
    ToolArgs args(kProgram, kUsage, argc, argv);
    while (args.next()) {
        const std::string& arg = args.arg();
        if (arg == "-o") {
            a.out = args.value();
        } else if (arg == "--from") {
            a.from = args.integer(0);
        } else if (arg == "--smooth") {
            a.smooth = args.integer(1);
        } else if (arg == "--experts-at") {
            a.experts_at = parse_steps(args, args.value());
        } else if (arg == "--size") {
            const std::string text = args.value();
            int w = 0, h = 0;
            char tail = 0;
            if (std::sscanf(text.c_str(), "%dx%d%c", &w, &h, &tail) != 2 || w < 400 || h < 300 || w > 20000 ||
                h > 20000)
                args.fail("--size takes WIDTHxHEIGHT in pixels, at least 400x300 and at most 20000x20000, got '" +
                          text + "'");
            a.width = w;
            a.height = h;
        } else if (arg.rfind("-", 0) == 0) {
            args.fail_with_usage("unexpected argument '" + arg + "'");
        } else {
            a.runs.push_back(arg);
        }
    }
    if (a.runs.empty()) args.fail_with_usage("a run directory or metrics file is required");
    return a;
}

// A run's name in legends: its directory's name (a metrics file named
// metrics.jsonl is named by its directory too).
std::string run_name(const fs::path& file) {
    const fs::path dir = file.parent_path();
    if (file.stem() == "metrics" && !dir.filename().empty()) return dir.filename().string();
    return file.stem().string();
}

struct Run {
    std::string name, file;
    std::vector<MetricsLine> lines;
};

Run read_run(const std::string& arg) {
    const fs::path path = fs::path(arg).lexically_normal();
    std::error_code ec;
    const fs::path file = fs::is_directory(path, ec) ? path / "metrics.jsonl" : path;
    Run r;
    r.file = file.string();
    r.name = run_name(file);
    if (!fs::is_regular_file(file, ec))
        exit_with_error(kProgram, "no metrics at '" + r.file +
                                      "': give a run directory (train.out_dir, where moe-train writes "
                                      "metrics.jsonl) or a metrics file");
    try {
        r.lines = read_metrics(r.file);
    } catch (const DataError& e) {
        exit_with_error(kProgram, e.what());
    }
    return r;
}

// A field's (step, value) points in one run, steps at or after `from`.
std::vector<std::pair<double, double>> points_of(const Run& run, const std::string& key, long from) {
    std::vector<std::pair<double, double>> pts;
    for (const MetricsLine& line : run.lines) {
        double step = std::nan(""), value = std::nan("");
        bool has_key = false;
        for (const auto& f : line) {
            if (f.first == "step") step = f.second.number();
            if (f.first == key && f.second.depth == 0) {
                value = f.second.number();
                has_key = true;
            }
        }
        if (has_key && std::isfinite(step) && step >= double(from)) pts.emplace_back(step, value);
    }
    return pts;
}

bool any_nonzero(const std::vector<std::pair<double, double>>& pts) {
    for (const auto& p : pts)
        if (std::isfinite(p.second) && p.second != 0) return true;
    return false;
}

const Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},  {148, 103, 189},
                        {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};

Rgb run_color(size_t i) { return kPalette[i % (sizeof kPalette / sizeof kPalette[0])]; }

// c mixed 2:1 with white: the raw values behind a smoothed line.
Rgb lighter(Rgb c) { return {uint8_t((c.r + 2 * 255) / 3), uint8_t((c.g + 2 * 255) / 3), uint8_t((c.b + 2 * 255) / 3)}; }

// The charts: the loss first (training lines, smoothed over `smooth` steps,
// validation squares, the legend), then one chart a field; a field no run has
// a nonzero value of is left out.
std::vector<Panel> build_panels(const std::vector<Run>& runs, long from, long smooth) {
    std::vector<Panel> panels;
    const bool one = runs.size() == 1;
    Panel loss{"loss", {}};
    bool has_val = false;
    for (size_t i = 0; i < runs.size(); ++i) {
        Series train{one ? "train" : runs[i].name, run_color(i), points_of(runs[i], "loss", from), false};
        if (smooth > 1) {
            loss.series.push_back({"", lighter(train.color), train.points, false});
            train.points = trailing_mean(train.points, smooth);
        }
        Series val{one ? "validation" : "", one ? run_color(1) : run_color(i), points_of(runs[i], "val_loss", from),
                   true};
        has_val = has_val || any_nonzero(val.points);
        loss.series.push_back(std::move(train));
        loss.series.push_back(std::move(val));
    }
    std::string key;  // what the lines and squares are, where the legend does not say
    if (smooth > 1) key = "lines: mean of " + std::to_string(smooth) + " steps";
    if (!one && has_val) key += (key.empty() ? "" : ", ") + std::string("squares: validation");
    if (!key.empty()) loss.title += " (" + key + ")";
    panels.push_back(std::move(loss));

    struct Field {
        const char *key, *title;
        bool squares;  // sparse points (evaluations): squares, not a line
    };
    const Field fields[] = {
        {"val_bpb", "validation bits per byte", true},
        {"lr", "learning rate", false},
        {"grad_norm", "gradient norm (before clipping)", false},
        {"tokens_per_s", "tokens/s", false},
        {"step_s", "step time (s)", false},
        {"aux", "router losses (balance + z)", false},
        {"load_max_over_mean", "expert load: max / mean", false},
        {"dropped", "token-slots dropped by capacity", false},
        {"all_to_all_s", "all-to-all time a step (s)", false},
    };
    for (const Field& field : fields) {
        Panel p{field.title, {}};
        bool shown = false;
        for (size_t i = 0; i < runs.size(); ++i) {
            // The loss chart's legend names the runs' colours for all.
            Series s{"", run_color(i), points_of(runs[i], field.key, from), field.squares};
            shown = shown || any_nonzero(s.points);
            p.series.push_back(std::move(s));
        }
        if (shown) panels.push_back(std::move(p));
    }
    return panels;
}

// Each run's expert telemetry as FILE-experts.png beside FILE.png (one file
// a run, named after it, when there are several); a run without telemetry
// (logged before there was any) has none.
void write_expert_figures(const Args& args, const std::vector<Run>& runs, const std::string& out) {
    const fs::path base = fs::path(out).replace_extension();
    for (const Run& run : runs) {
        std::vector<ExpertInterval> intervals;
        try {
            intervals = expert_intervals(run.lines, args.from);
        } catch (const DataError& e) {
            exit_with_error(kProgram, "'" + run.file + "': " + e.what());
        }
        if (intervals.empty()) continue;
        std::vector<int> at;
        for (long step : args.experts_at) {
            const int i = interval_at(intervals, step);
            if (step < args.from || i < 0)
                exit_with_error(kProgram, "--experts-at " + std::to_string(step) + ": '" + run.file +
                                              "' has expert telemetry for steps " +
                                              std::to_string(intervals.front().first_step) + " to " +
                                              std::to_string(intervals.back().step) + " only");
            at.push_back(i);
        }
        if (at.empty()) at.push_back(int(intervals.size()) - 1);
        Canvas canvas(args.width, args.height, {255, 255, 255});
        const int panels = draw_expert_figure(canvas, intervals, at);
        const std::string file =
            base.string() + (runs.size() == 1 ? "-experts.png" : "-experts-" + run.name + ".png");
        const std::string png = encode_png(canvas);
        try {
            write_file_atomically(file, {{png.data(), png.size()}});
        } catch (const std::exception& e) {
            exit_with_error(kProgram, std::string(e.what()) + " (choose another file with -o)");
        }
        std::printf("%s: expert telemetry of %zu log intervals, %zu layers x %zu experts, %d charts\n",
                    file.c_str(), intervals.size(), intervals[0].share.size(), intervals[0].share[0].size(), panels);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const Args args = parse(argc, argv);
    std::vector<Run> runs;
    for (const std::string& r : args.runs) runs.push_back(read_run(r));

    double x_lo = INFINITY, x_hi = -INFINITY;
    for (const Run& run : runs)
        for (const auto& p : points_of(run, "step", args.from)) {
            x_lo = std::min(x_lo, p.first);
            x_hi = std::max(x_hi, p.first);
        }
    if (x_lo > x_hi)
        exit_with_error(kProgram, args.from > 0 ? "no run has a step at or after --from " + std::to_string(args.from)
                                                : "'" + runs[0].file + "' has no steps yet: train first");

    std::string out = args.out;
    if (out.empty()) out = fs::path(runs[0].file).replace_extension(".png").string();

    const std::vector<Panel> panels = build_panels(runs, args.from, args.smooth);
    Canvas canvas(args.width, args.height, {255, 255, 255});
    const int cols = 2, rows = (int(panels.size()) + cols - 1) / cols, margin = 24;
    const int cell_w = (args.width - margin) / cols, cell_h = (args.height - margin) / rows;
    for (size_t i = 0; i < panels.size(); ++i) {
        const int x0 = margin + int(i % cols) * cell_w, y0 = margin + int(i / cols) * cell_h;
        draw_panel(canvas, x0, y0, x0 + cell_w - margin, y0 + cell_h - margin, panels[i], x_lo, x_hi);
    }
    const std::string png = encode_png(canvas);
    try {
        write_file_atomically(out, {{png.data(), png.size()}});
    } catch (const std::exception& e) {
        exit_with_error(kProgram, std::string(e.what()) + " (choose another file with -o)");
    }
    std::printf("%s: %zu run(s), steps %.0f to %.0f, %zu charts\n", out.c_str(), runs.size(), x_lo, x_hi,
                panels.size());
    write_expert_figures(args, runs, out);
    return 0;
}
