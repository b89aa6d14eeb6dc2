// The expert telemetry of a run (its metrics lines with "expert_share", see
// engine/train/expert_telemetry.h) as a figure: heatmaps of each layer's
// expert load over a range of steps and at chosen steps, and per-layer charts
// of dropped slots, balance loss and z-loss over the steps.
#pragma once
#include <string>
#include <vector>

#include "engine/io/metrics.h"
#include "tools/raster.h"

namespace moe {

// One log interval's telemetry.
struct ExpertInterval {
    long first_step = 0, step = 0;           // the interval's first and last step
    std::vector<std::vector<double>> share;  // [L][E] of the layer's slots
    std::vector<double> slots, dropped, balance_loss, z_loss;  // [L]
};

// The telemetry lines of a metrics file whose step is at or after `from`, in
// order. A telemetry line with missing or misshapen fields throws DataError.
std::vector<ExpertInterval> expert_intervals(const std::vector<MetricsLine>& lines, long from);

// The interval a step falls in: the first ending at or after it; -1 when
// the step is past the last.
int interval_at(const std::vector<ExpertInterval>& intervals, long step);

// Each expert's load over the given intervals, as a multiple of a balanced
// share (1 / experts): its slots over all of them, weighted by the slots.
std::vector<std::vector<double>> relative_load(const std::vector<ExpertInterval>& intervals);

// Draws the figure: a heatmap over all intervals, one at each interval of
// `at` (indices into intervals), then the per-layer charts that have a
// nonzero value. Returns how many panels it drew.
int draw_expert_figure(Canvas& canvas, const std::vector<ExpertInterval>& intervals, const std::vector<int>& at);

}  // namespace moe
