// Per-expert telemetry: over each log interval, every layer's share of the
// routed token-slots that went to each expert, the slots dropped by capacity,
// and the load-balancing and z losses apart; and a watch for experts that
// starve (get almost no tokens) interval after interval.
#pragma once
#include <string>
#include <vector>

#include "engine/io/metrics.h"
#include "engine/train/step_totals.h"

namespace moe {

class ExpertTelemetry {
public:
    // starved_share: of a balanced share (1 / experts), below which an expert
    // starves (0: never); starved_intervals: how many intervals in a row make
    // it worth a warning.
    ExpertTelemetry(int layers, int experts, double starved_share, int starved_intervals);

    // One taken step's totals (already summed over the ranks).
    void add(const StepTotals& t);
    bool empty() const { return steps_ == 0; }

    // The interval ending at `step` as a metrics line, then a new interval:
    //   {"step": s, "interval_steps": n,
    //    "expert_share": [L][E] share of the layer's slots each expert was chosen for,
    //    "layer_slots": [L], "layer_dropped": [L] token-slots chosen and dropped,
    //    "layer_balance_loss": [L], "layer_z_loss": [L] means over the steps}
    // Experts that have now starved for starved_intervals intervals in a row
    // are added to `warnings`, one line each.
    MetricsLine take(int step, std::vector<std::string>& warnings);

private:
    int L_, E_;
    double starved_share_;
    int starved_intervals_;
    int steps_ = 0;
    std::vector<std::vector<double>> routed_;  // [L][E]
    std::vector<double> dropped_, balance_, z_;  // [L]
    std::vector<std::vector<int>> starved_for_;  // [L][E] intervals in a row below the threshold
};

}  // namespace moe
