#include "tools/chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace moe {

namespace {

const Rgb kGrid{225, 225, 225}, kWhite{255, 255, 255};

double nice_step(double range, int max_ticks) {
    const double raw = range / std::max(1, max_ticks);
    const double power = std::pow(10.0, std::floor(std::log10(raw)));
    for (double m : {1.0, 2.0, 5.0})
        if (m * power >= raw * (1 - 1e-9)) return m * power;
    return 10 * power;
}

// The finite y range of the panel's points; NaN when there are none.
std::pair<double, double> y_range(const Panel& panel) {
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const Series& s : panel.series)
        for (const auto& p : s.points)
            if (std::isfinite(p.second)) {
                lo = std::min(lo, p.second);
                hi = std::max(hi, p.second);
            }
    if (lo > hi) return {std::nan(""), std::nan("")};
    return {lo, hi};
}

void draw_marker(Canvas& c, int x, int y, Rgb color) { c.fill_rect(x - 3, y - 3, x + 3, y + 3, color); }

}  // namespace

void draw_title(Canvas& c, int x, int y, int width, std::string title) {
    int scale = kTitleScale;
    if (Canvas::text_width(title, scale) > width) scale = 1;
    if (Canvas::text_width(title, scale) > width) {
        const size_t fits = size_t(std::max(0, (width / scale + 1) / 6 - 2));
        title = title.substr(0, fits) + "..";
    }
    c.text(x, y + (Canvas::text_height(kTitleScale) - Canvas::text_height(scale)) / 2, title, kInk, scale);
}

int PlotArea::px(double x) const {
    return left + int(std::lround((x - x_lo) / (x_hi - x_lo) * (right - left)));
}
int PlotArea::py(double y) const {
    return bottom - int(std::lround((y - y_lo) / (y_hi - y_lo) * (bottom - top)));
}

std::vector<double> nice_ticks(double lo, double hi, int max_ticks) {
    if (!(hi > lo)) {  // one value: a small range around it
        const double pad = lo != 0 ? std::fabs(lo) * 0.05 : 1.0;
        lo -= pad;
        hi += pad;
    }
    if (!std::isfinite(hi - lo)) return {lo, hi};  // beyond doubles' range: the ends alone
    const double step = nice_step(hi - lo, max_ticks);
    std::vector<double> ticks;
    const double first = std::floor(lo / step + 1e-9), last = std::ceil(hi / step - 1e-9);
    // Counted in integers: where values dwarf the step, first + 1 == first.
    const long count = std::min<long>(std::lround(last - first), max_ticks + 1);
    for (long k = 0; k <= count; ++k) {
        const double v = (first + double(k)) * step;
        ticks.push_back(v == 0 ? 0.0 : v);
    }
    return ticks;
}

std::string tick_label(double value, double step) {
    char buf[32];
    const double mag = std::max(std::fabs(value), step);
    if (value == 0) return "0";
    if (step >= 1e3) {  // thousands and millions
        const double unit = step >= 1e5 ? 1e6 : 1e3;
        const int decimals = std::max(0, int(std::ceil(-std::log10(step / unit) - 1e-9)));
        std::snprintf(buf, sizeof buf, "%.*f%s", decimals, value / unit, unit == 1e6 ? "M" : "k");
    } else if (step < 1e-3) {  // mantissa digits that tell the ticks apart
        const int exponent = int(std::floor(std::log10(mag)));
        const int decimals = std::max(0, int(std::ceil(exponent - std::log10(step) - 1e-9)));
        std::snprintf(buf, sizeof buf, "%.*e", decimals, value);
    } else {
        const int decimals = std::max(0, int(std::ceil(-std::log10(step) - 1e-9)));
        std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
    }
    return buf;
}

std::vector<std::pair<double, double>> trailing_mean(const std::vector<std::pair<double, double>>& pts, long window) {
    std::vector<std::pair<double, double>> out;
    std::vector<double> recent;  // the finite values so far
    double sum = 0;
    for (const auto& p : pts) {
        if (!std::isfinite(p.second)) {
            out.push_back(p);
            continue;
        }
        recent.push_back(p.second);
        sum += p.second;
        if (long(recent.size()) > window) sum -= recent[recent.size() - size_t(window) - 1];
        out.emplace_back(p.first, sum / double(std::min<long>(window, long(recent.size()))));
    }
    return out;
}

namespace {

// A panel's plot area and its ticks: room for the title above and the tick
// labels left and below, as many ticks as their labels have room for (a
// label's height and a half apart on y, the widest label and a gap apart on x).
struct Axes {
    PlotArea area;
    std::vector<double> xt, yt;
    double xstep, ystep;
};

Axes layout_axes(int x0, int y0, int x1, int y1, const Panel& panel, double x_lo, double x_hi) {
    const int th = Canvas::text_height(kTitleScale), lh = Canvas::text_height(kLabelScale);
    Axes ax;
    PlotArea& a = ax.area;
    a.top = y0 + th + 14;
    a.right = x1;
    a.bottom = y1 - lh - 8;
    const auto range = y_range(panel);
    const int y_room = std::max(1, (a.bottom - a.top) / (lh * 5 / 2));
    ax.yt = std::isnan(range.first) ? std::vector<double>{0.0, 1.0}
                                    : nice_ticks(range.first, range.second, std::min(5, y_room));
    ax.ystep = ax.yt.size() > 1 ? ax.yt[1] - ax.yt[0] : 1.0;
    int label_w = 0;
    for (double v : ax.yt) label_w = std::max(label_w, Canvas::text_width(tick_label(v, ax.ystep), kLabelScale));
    a.left = x0 + label_w + 8;
    const auto x_ticks = [&](int most) { return nice_ticks(x_lo, x_hi, std::max(1, most)); };
    ax.xt = x_ticks(6);
    int widest = 0;
    for (double v : ax.xt)
        widest = std::max(widest, Canvas::text_width(tick_label(v, ax.xt[1] - ax.xt[0]), kLabelScale));
    ax.xt = x_ticks(std::min(6, (a.right - a.left) / (widest + 24)));
    ax.xstep = ax.xt.size() > 1 ? ax.xt[1] - ax.xt[0] : 1.0;
    a.x_lo = x_lo;
    a.x_hi = x_hi;
    a.y_lo = ax.yt.front();
    a.y_hi = ax.yt.back();
    return ax;
}

// Grid and labels; x ticks outside [x_lo, x_hi] are left out, and so is a
// label that would touch the one before it or pass x1.
void draw_grid(Canvas& canvas, const Axes& ax, int x1) {
    const PlotArea& a = ax.area;
    const int lh = Canvas::text_height(kLabelScale);
    for (double v : ax.yt) {
        const int y = a.py(v);
        canvas.line(a.left, y, a.right, y, kGrid);
        const std::string s = tick_label(v, ax.ystep);
        canvas.text(a.left - 6 - Canvas::text_width(s, kLabelScale), y - lh / 2, s, kInk, kLabelScale);
    }
    int last_label_end = a.left - 1000;
    for (double v : ax.xt) {
        if (v < a.x_lo - 1e-9 * ax.xstep || v > a.x_hi + 1e-9 * ax.xstep) continue;
        const int x = a.px(v);
        canvas.line(x, a.top, x, a.bottom, kGrid);
        const std::string s = tick_label(v, ax.xstep);
        const int w = Canvas::text_width(s, kLabelScale);
        const int at = std::min(std::max(x - w / 2, a.left), x1 - w);
        if (at < last_label_end + 12) continue;
        canvas.text(at, a.bottom + 6, s, kInk, kLabelScale);
        last_label_end = at + w;
    }
}

// Each series' finite points in [x_lo, x_hi]: as markers, or as lines broken
// where a point is left out.
void draw_series(Canvas& canvas, const PlotArea& a, const Panel& panel) {
    for (const Series& s : panel.series) {
        bool have_prev = false;
        int px = 0, py = 0;
        for (const auto& p : s.points) {
            if (!std::isfinite(p.second) || p.first < a.x_lo || p.first > a.x_hi) {
                have_prev = false;
                continue;
            }
            const int x = a.px(p.first), y = a.py(p.second);
            if (s.markers)
                draw_marker(canvas, x, y, s.color);
            else if (have_prev)
                canvas.line(px, py, x, y, s.color, 2);
            else
                canvas.line(x, y, x, y, s.color, 2);
            px = x;
            py = y;
            have_prev = true;
        }
    }
}

void draw_frame(Canvas& canvas, const PlotArea& a) {
    canvas.line(a.left, a.top, a.right, a.top, kInk);
    canvas.line(a.left, a.bottom, a.right, a.bottom, kInk);
    canvas.line(a.left, a.top, a.left, a.bottom, kInk);
    canvas.line(a.right, a.top, a.right, a.bottom, kInk);
}

// Top right inside the plot, one row a labelled series.
void draw_legend(Canvas& canvas, const PlotArea& a, const Panel& panel) {
    const int lh = Canvas::text_height(kLabelScale);
    int rows = 0, legend_w = 0;
    for (const Series& s : panel.series)
        if (!s.label.empty()) {
            ++rows;
            legend_w = std::max(legend_w, Canvas::text_width(s.label, kLabelScale));
        }
    if (!rows) return;
    const int row_h = lh + 6, swatch = 24;
    const int lx1 = a.right - 6, lx0 = lx1 - (legend_w + swatch + 18), ly0 = a.top + 6;
    canvas.fill_rect(lx0, ly0, lx1, ly0 + rows * row_h + 6, kWhite);
    canvas.line(lx0, ly0, lx1, ly0, kGrid);
    canvas.line(lx0, ly0 + rows * row_h + 6, lx1, ly0 + rows * row_h + 6, kGrid);
    canvas.line(lx0, ly0, lx0, ly0 + rows * row_h + 6, kGrid);
    canvas.line(lx1, ly0, lx1, ly0 + rows * row_h + 6, kGrid);
    int r = 0;
    for (const Series& s : panel.series) {
        if (s.label.empty()) continue;
        const int cy = ly0 + 6 + r * row_h + lh / 2, sx = lx0 + 6;
        if (s.markers)
            draw_marker(canvas, sx + swatch / 2, cy, s.color);
        else
            canvas.line(sx, cy, sx + swatch, cy, s.color, 2);
        canvas.text(sx + swatch + 6, cy - lh / 2, s.label, kInk, kLabelScale);
        ++r;
    }
}

}  // namespace

PlotArea draw_panel(Canvas& canvas, int x0, int y0, int x1, int y1, const Panel& panel, double x_lo, double x_hi) {
    draw_title(canvas, x0, y0, x1 - x0, panel.title);
    if (!(x_hi > x_lo)) x_hi = x_lo + 1;
    const Axes axes = layout_axes(x0, y0, x1, y1, panel, x_lo, x_hi);
    draw_grid(canvas, axes, x1);
    draw_series(canvas, axes.area, panel);
    draw_frame(canvas, axes.area);  // last but the legend, over the data's edge pixels
    draw_legend(canvas, axes.area, panel);
    return axes.area;
}

}  // namespace moe
