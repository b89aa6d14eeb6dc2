#include "tools/expert_figure.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/io/files.h"
#include "tools/chart.h"
#include "tools/heatmap.h"

namespace moe {

namespace {

const MetricValue* find(const MetricsLine& line, const std::string& key) {
    for (const auto& f : line)
        if (f.first == key) return &f.second;
    return nullptr;
}

// A field of a telemetry line: a list of `layers` numbers.
std::vector<double> layer_list(const MetricsLine& line, const std::string& key, size_t layers, long step) {
    const MetricValue* v = find(line, key);
    if (!v || v->depth != 1 || v->rows[0].size() != layers)
        throw DataError("the expert telemetry of step " + std::to_string(step) + " has no list '" + key + "' of " +
                        std::to_string(layers) + " layers");
    return v->rows[0];
}

// Layer l of L along a ramp from dark blue to orange.
Rgb layer_color(size_t l, size_t layers) {
    const Rgb from{35, 55, 140}, to{240, 140, 20};
    const double t = layers > 1 ? double(l) / double(layers - 1) : 0.0;
    const auto lerp = [t](uint8_t a, uint8_t b) { return uint8_t(std::lround(a + (b - a) * t)); };
    return {lerp(from.r, to.r), lerp(from.g, to.g), lerp(from.b, to.b)};
}

// A chart of one value per layer over the intervals; empty when all are 0.
Panel layer_chart(const std::vector<ExpertInterval>& intervals, const std::string& title,
                  double (*value)(const ExpertInterval&, size_t)) {
    const size_t L = intervals[0].slots.size();
    Panel p{L > 8 ? title + " (colour: layer 0 to " + std::to_string(L - 1) + ")" : title, {}};
    bool nonzero = false;
    for (size_t l = 0; l < L; ++l) {
        const bool labelled = L <= 8 || l == 0 || l + 1 == L;
        Series s{labelled ? "layer " + std::to_string(l) : "", layer_color(l, L), {}, intervals.size() == 1};
        for (const ExpertInterval& iv : intervals) {
            const double v = value(iv, l);
            nonzero = nonzero || (std::isfinite(v) && v != 0);
            s.points.emplace_back(double(iv.step), v);
        }
        p.series.push_back(std::move(s));
    }
    if (!nonzero) p.series.clear();
    return p;
}

std::string steps_text(long first, long last) {
    return first == last ? "step " + std::to_string(last) : "steps " + std::to_string(first) + "-" + std::to_string(last);
}

}  // namespace

std::vector<ExpertInterval> expert_intervals(const std::vector<MetricsLine>& lines, long from) {
    std::vector<ExpertInterval> out;
    for (const MetricsLine& line : lines) {
        const MetricValue* share = find(line, "expert_share");
        const MetricValue* step = find(line, "step");
        const MetricValue* steps = find(line, "interval_steps");
        if (!share || !step || step->number() < double(from)) continue;
        ExpertInterval iv;
        iv.step = long(step->number());
        iv.first_step = steps ? iv.step - long(steps->number()) + 1 : iv.step;
        const size_t L = share->rows.size(), E = L ? share->rows[0].size() : 0;
        bool square = share->depth == 2 && E > 0;
        for (const auto& row : share->rows) square = square && row.size() == E;
        if (!square)
            throw DataError("the expert telemetry of step " + std::to_string(iv.step) +
                            " has no table 'expert_share' of layers x experts");
        if (!out.empty() && (out[0].share.size() != L || out[0].share[0].size() != E))
            throw DataError("the expert telemetry of step " + std::to_string(iv.step) + " has " + std::to_string(L) +
                            " x " + std::to_string(E) + " layers x experts, step " + std::to_string(out[0].step) +
                            " had " + std::to_string(out[0].share.size()) + " x " +
                            std::to_string(out[0].share[0].size()) + ": not one model's run");
        iv.share = share->rows;
        iv.slots = layer_list(line, "layer_slots", L, iv.step);
        iv.dropped = layer_list(line, "layer_dropped", L, iv.step);
        iv.balance_loss = layer_list(line, "layer_balance_loss", L, iv.step);
        iv.z_loss = layer_list(line, "layer_z_loss", L, iv.step);
        out.push_back(std::move(iv));
    }
    return out;
}

int interval_at(const std::vector<ExpertInterval>& intervals, long step) {
    for (size_t i = 0; i < intervals.size(); ++i)
        if (intervals[i].step >= step) return int(i);
    return -1;
}

std::vector<std::vector<double>> relative_load(const std::vector<ExpertInterval>& intervals) {
    const size_t L = intervals[0].share.size(), E = intervals[0].share[0].size();
    std::vector<std::vector<double>> load(L, std::vector<double>(E, 0.0));
    for (size_t l = 0; l < L; ++l) {
        double slots = 0;
        for (const ExpertInterval& iv : intervals) {
            slots += iv.slots[l];
            for (size_t e = 0; e < E; ++e) load[l][e] += iv.share[l][e] * iv.slots[l];
        }
        for (double& x : load[l]) x = slots > 0 ? x / slots * double(E) : std::nan("");
    }
    return load;
}

int draw_expert_figure(Canvas& canvas, const std::vector<ExpertInterval>& intervals, const std::vector<int>& at) {
    std::vector<Heatmap> maps;
    const auto map_of = [](const std::vector<ExpertInterval>& ivs) {
        return Heatmap{"expert load, " + steps_text(ivs.front().first_step, ivs.back().step) + " (1: balanced)",
                       "layer", "expert", relative_load(ivs), 0, 1, 2};
    };
    if (!(at.size() == 1 && intervals.size() == 1)) maps.push_back(map_of(intervals));
    for (int i : at) maps.push_back(map_of({intervals[size_t(i)]}));

    std::vector<Panel> charts;
    for (Panel p : {layer_chart(intervals, "slots dropped by capacity (%)",
                                [](const ExpertInterval& iv, size_t l) {
                                    return iv.slots[l] > 0 ? 100 * iv.dropped[l] / iv.slots[l] : 0.0;
                                }),
                    layer_chart(intervals, "load-balancing loss by layer",
                                [](const ExpertInterval& iv, size_t l) { return iv.balance_loss[l]; }),
                    layer_chart(intervals, "z-loss by layer",
                                [](const ExpertInterval& iv, size_t l) { return iv.z_loss[l]; })})
        if (!p.series.empty()) charts.push_back(std::move(p));

    const int margin = 24, W = canvas.width(), H = canvas.height();
    const int map_h = charts.empty() ? H - margin : (H - margin) * 3 / 5;
    const int map_w = (W - margin) / int(maps.size());
    for (size_t i = 0; i < maps.size(); ++i) {
        const int x0 = margin + int(i) * map_w;
        draw_heatmap(canvas, x0, margin, x0 + map_w - margin, margin + map_h - margin, maps[i]);
    }
    if (!charts.empty()) {
        const int chart_w = (W - margin) / int(charts.size()), y0 = margin + map_h;
        const double x_lo = double(intervals.front().step), x_hi = double(intervals.back().step);
        for (size_t i = 0; i < charts.size(); ++i) {
            const int x0 = margin + int(i) * chart_w;
            draw_panel(canvas, x0, y0, x0 + chart_w - margin, H - margin, charts[i], x_lo, x_hi);
        }
    }
    return int(maps.size() + charts.size());
}

}  // namespace moe
