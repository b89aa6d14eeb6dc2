#include "tools/heatmap.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "tools/chart.h"

namespace moe {

namespace {

const Rgb kBlue{33, 102, 172}, kWhite{255, 255, 255}, kRed{178, 24, 43}, kMissing{200, 200, 200};

Rgb mix(Rgb a, Rgb b, double t) {
    const auto lerp = [t](uint8_t x, uint8_t y) { return uint8_t(std::lround(x + (y - x) * t)); };
    return {lerp(a.r, b.r), lerp(a.g, b.g), lerp(a.b, b.b)};
}

std::string number_label(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

// A vertical bar of the scale from hi (top) to lo, its three ticks labelled.
void draw_color_bar(Canvas& canvas, int x0, int y0, int y1, const Heatmap& map) {
    const int w = 16, lh = Canvas::text_height(kLabelScale);
    for (int y = y0; y <= y1; ++y) {
        const double v = map.hi - (map.hi - map.lo) * (y - y0) / std::max(1, y1 - y0);
        canvas.fill_rect(x0, y, x0 + w, y, heat_color(v, map.lo, map.centre, map.hi));
    }
    canvas.line(x0, y0, x0 + w, y0, kInk);
    canvas.line(x0, y1, x0 + w, y1, kInk);
    canvas.line(x0, y0, x0, y1, kInk);
    canvas.line(x0 + w, y0, x0 + w, y1, kInk);
    for (double v : {map.lo, map.centre, map.hi}) {
        const int y = y1 - int(std::lround((v - map.lo) / (map.hi - map.lo) * (y1 - y0)));
        canvas.line(x0 + w, y, x0 + w + 4, y, kInk);
        canvas.text(x0 + w + 8, y - lh / 2, number_label(v), kInk, kLabelScale);
    }
}

}  // namespace

Rgb heat_color(double v, double lo, double centre, double hi) {
    if (!std::isfinite(v)) return kMissing;
    if (v <= centre) return mix(kBlue, kWhite, std::clamp((v - lo) / (centre - lo), 0.0, 1.0));
    return mix(kWhite, kRed, std::clamp((v - centre) / (hi - centre), 0.0, 1.0));
}

int label_every(int cell, int room) {
    for (int k = 1;; k *= 10)
        for (int m : {1, 2, 5})
            if (m * k * cell >= room) return m * k;
}

HeatmapArea draw_heatmap(Canvas& canvas, int x0, int y0, int x1, int y1, const Heatmap& map) {
    const int th = Canvas::text_height(kTitleScale), lh = Canvas::text_height(kLabelScale);
    draw_title(canvas, x0, y0, x1 - x0, map.title);
    const int rows = int(map.values.size()), cols = rows ? int(map.values[0].size()) : 0;
    const std::string widest_row = std::to_string(std::max(0, rows - 1));
    const int bar_w = 16 + 8 + Canvas::text_width(number_label(map.hi), kLabelScale) + 8;

    HeatmapArea a;
    a.left = x0 + Canvas::text_width(map.row_name + " ", kLabelScale) + Canvas::text_width(widest_row, kLabelScale) + 8;
    a.top = y0 + th + lh + 16;  // the title, then the row axis' name
    const int right = x1 - bar_w - 12, bottom = y1 - 2 * lh - 14;
    a.cell_w = cols ? std::max(1, (right - a.left + 1) / cols) : 1;
    a.cell_h = rows ? std::max(1, (bottom - a.top + 1) / rows) : 1;

    // Cells; a white seam between them where they are large enough to spare it.
    const int seam_x = a.cell_w >= 8, seam_y = a.cell_h >= 8;
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const int cx = a.left + c * a.cell_w, cy = a.top + r * a.cell_h;
            canvas.fill_rect(cx, cy, cx + a.cell_w - 1 - seam_x, cy + a.cell_h - 1 - seam_y,
                             heat_color(map.values[size_t(r)][size_t(c)], map.lo, map.centre, map.hi));
        }
    const int grid_right = a.left + cols * a.cell_w - 1, grid_bottom = a.top + rows * a.cell_h - 1;

    // Indices: rows at the left, columns below, each label where there is room.
    const int row_step = label_every(a.cell_h, lh + 4);
    for (int r = 0; r < rows; r += row_step) {
        const std::string s = std::to_string(r);
        canvas.text(a.left - 6 - Canvas::text_width(s, kLabelScale), a.centre_y(r) - lh / 2, s, kInk, kLabelScale);
    }
    const int col_step = label_every(a.cell_w, Canvas::text_width(std::to_string(std::max(0, cols - 1)), kLabelScale) + 8);
    for (int c = 0; c < cols; c += col_step) {
        const std::string s = std::to_string(c);
        canvas.text(a.centre_x(c) - Canvas::text_width(s, kLabelScale) / 2, grid_bottom + 6, s, kInk, kLabelScale);
    }
    canvas.text(x0, a.top - lh - 2, map.row_name, kInk, kLabelScale);
    canvas.text((a.left + grid_right) / 2 - Canvas::text_width(map.column_name, kLabelScale) / 2,
                grid_bottom + lh + 12, map.column_name, kInk, kLabelScale);
    draw_color_bar(canvas, grid_right + 12, a.top, std::max(a.top + 20, grid_bottom), map);
    return a;
}

}  // namespace moe
