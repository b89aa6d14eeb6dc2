#include "engine/train/expert_telemetry.h"

#include <spdlog/fmt/fmt.h>

#include <algorithm>
#include <numeric>

namespace moe {

ExpertTelemetry::ExpertTelemetry(int layers, int experts, double starved_share, int starved_intervals)
    : L_(layers),
      E_(experts),
      starved_share_(starved_share),
      starved_intervals_(starved_intervals),
      routed_(layers, std::vector<double>(experts, 0.0)),
      dropped_(layers, 0.0),
      balance_(layers, 0.0),
      z_(layers, 0.0),
      starved_for_(layers, std::vector<int>(experts, 0)) {}

void ExpertTelemetry::add(const StepTotals& t) {
    ++steps_;
    for (int l = 0; l < L_; ++l) {
        for (int e = 0; e < E_; ++e) routed_[l][e] += double(t.routed[l][e]);
        dropped_[l] += double(t.dropped[l]);
        balance_[l] += t.balance_loss[l];
        z_[l] += t.z_loss[l];
    }
}

MetricsLine ExpertTelemetry::take(int step, std::vector<std::string>& warnings) {
    std::vector<std::vector<double>> share(L_, std::vector<double>(E_, 0.0));
    std::vector<double> slots(L_);
    const double balanced = 1.0 / E_;
    for (int l = 0; l < L_; ++l) {
        slots[l] = std::accumulate(routed_[l].begin(), routed_[l].end(), 0.0);
        for (int e = 0; e < E_; ++e) {
            share[l][e] = slots[l] > 0 ? routed_[l][e] / slots[l] : 0.0;
            const bool starved = starved_share_ > 0 && slots[l] > 0 && share[l][e] < starved_share_ * balanced;
            starved_for_[l][e] = starved ? starved_for_[l][e] + 1 : 0;
            if (starved_for_[l][e] == starved_intervals_)
                warnings.push_back(fmt::format(
                    "layer {} expert {} is starving: {:.2f}% of the layer's token-slots over steps {}-{} (balanced: "
                    "{:.2f}%), below {:g} of a balanced share for {} log interval(s) in a row",
                    l, e, 100 * share[l][e], step - steps_ + 1, step, 100 * balanced, starved_share_,
                    starved_intervals_));
        }
        balance_[l] /= steps_;
        z_[l] /= steps_;
    }
    MetricsLine line = {{"step", step},
                        {"interval_steps", steps_},
                        {"expert_share", share},
                        {"layer_slots", slots},
                        {"layer_dropped", dropped_},
                        {"layer_balance_loss", balance_},
                        {"layer_z_loss", z_}};
    steps_ = 0;
    for (int l = 0; l < L_; ++l) {
        std::fill(routed_[l].begin(), routed_[l].end(), 0.0);
        dropped_[l] = balance_[l] = z_[l] = 0;
    }
    return line;
}

}  // namespace moe
