// A heatmap panel on a Canvas: rows x columns of cells coloured on a
// diverging scale (blue below the centre value, white at it, red above),
// row and column indices along the edges, and a colour bar with its ticks.
#pragma once
#include <string>
#include <vector>

#include "tools/raster.h"

namespace moe {

struct Heatmap {
    std::string title;
    std::string row_name, column_name;        // axis names, e.g. "layer", "expert"
    std::vector<std::vector<double>> values;  // [rows][columns]; a NaN cell is grey
    double lo = 0, centre = 1, hi = 2;        // the scale; values beyond lo and hi take their ends' colour
};

// Where the cells landed: cell (r, c) covers columns left + c * cell_w to
// left + (c + 1) * cell_w - 1 and rows likewise down from top.
struct HeatmapArea {
    int left = 0, top = 0, cell_w = 0, cell_h = 0;
    int centre_x(int column) const { return left + column * cell_w + cell_w / 2; }
    int centre_y(int row) const { return top + row * cell_h + cell_h / 2; }
};

// The scale's colour of v: lo deep blue, centre white, hi deep red.
Rgb heat_color(double v, double lo, double centre, double hi);

// Every k-th index labelled, k the smallest of 1, 2, 5, 10, 20, 50, ... that
// keeps labels `room` pixels apart when cells are `cell` pixels.
int label_every(int cell, int room);

// Draws the heatmap in the canvas rectangle (x0, y0)-(x1, y1), the colour
// bar at its right edge.
HeatmapArea draw_heatmap(Canvas& canvas, int x0, int y0, int x1, int y1, const Heatmap& map);

}  // namespace moe
