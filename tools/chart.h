// One chart panel on a Canvas: a title, a frame, a grid at "nice" ticks
// (1, 2 or 5 times a power of ten) with their labels, and series drawn as
// lines or as square markers, with a legend when a series has a label.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "tools/raster.h"

namespace moe {

// Text and frames; the scale of titles and of tick labels.
constexpr Rgb kInk{40, 40, 40};
constexpr int kTitleScale = 2, kLabelScale = 2;

// A panel's title in `width` pixels from (x, y): smaller when it does not
// fit, cut short with ".." when it still does not.
void draw_title(Canvas& c, int x, int y, int width, std::string title);

struct Series {
    std::string label;  // empty: not in the legend
    Rgb color;
    std::vector<std::pair<double, double>> points;  // (x, y) in x order; a NaN y breaks a line
    bool markers = false;                          // squares at the points instead of a line
};

struct Panel {
    std::string title;
    std::vector<Series> series;
};

// Where a panel's data landed: the plot area in pixels and the ranges it
// spans, to map a data point to its pixel.
struct PlotArea {
    int left = 0, top = 0, right = 0, bottom = 0;  // inclusive pixels
    double x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
    int px(double x) const;
    int py(double y) const;
};

// Ticks at multiples of a nice step covering [lo, hi] (the first at or below
// lo, the last at or above hi), at most max_ticks + 1 intervals.
std::vector<double> nice_ticks(double lo, double hi, int max_ticks);
// A tick's label, as short as the step between ticks allows: "0.25",
// "3e-04", "12k", "1.5M".
std::string tick_label(double value, double step);

// Each point's value replaced by the mean of the last `window` finite values
// up to it (fewer at the start); a NaN stays NaN and counts for nothing.
std::vector<std::pair<double, double>> trailing_mean(const std::vector<std::pair<double, double>>& points,
                                                     long window);

// Draws the panel in the canvas rectangle (x0, y0)-(x1, y1), x over
// [x_lo, x_hi], y over nice ticks covering the panel's finite values.
PlotArea draw_panel(Canvas& canvas, int x0, int y0, int x1, int y1, const Panel& panel, double x_lo, double x_hi);

}  // namespace moe
