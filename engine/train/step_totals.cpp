#include "engine/train/step_totals.h"

#include <algorithm>
#include <numeric>

namespace moe {

int world_size(const ProcessGroups* groups) { return groups ? groups->world_size() : 1; }

void sum_over_world(std::vector<double>& v, const ProcessGroups* groups) {
    if (world_size(groups) > 1) groups->world->all_reduce(v.data(), int64_t(v.size()), DType::F64, ReduceOp::Sum);
}

void StepTotals::add(const ForwardResult& r, int accumulation) {
    const size_t L = r.layers.size();
    if (routed.empty()) {
        routed.assign(L, std::vector<int64_t>(L ? r.layers[0].routed.size() : 0, 0));
        dropped.assign(L, 0);
        balance_loss.assign(L, 0.0);
        z_loss.assign(L, 0.0);
    }
    loss += r.loss / accumulation;
    aux += r.aux / accumulation;
    for (size_t l = 0; l < L; ++l) {
        const MoeStats& s = r.layers[l];
        for (size_t e = 0; e < s.routed.size(); ++e) routed[l][e] += s.routed[e];
        dropped[l] += s.dropped;
        balance_loss[l] += s.losses.aux / accumulation;
        z_loss[l] += s.losses.z_loss / accumulation;
    }
}

void StepTotals::reduce(const ProcessGroups* groups) {
    std::vector<double> flat = {loss, aux, double(stop)};
    for (const auto& layer : routed) flat.insert(flat.end(), layer.begin(), layer.end());
    flat.insert(flat.end(), dropped.begin(), dropped.end());
    flat.insert(flat.end(), balance_loss.begin(), balance_loss.end());
    flat.insert(flat.end(), z_loss.begin(), z_loss.end());
    sum_over_world(flat, groups);
    const double W = world_size(groups);
    loss = flat[0] / W;
    aux = flat[1] / W;
    stop = flat[2] > 0;
    size_t i = 3;
    for (auto& layer : routed)
        for (auto& c : layer) c = int64_t(flat[i++]);
    for (auto& d : dropped) d = int64_t(flat[i++]);
    for (auto& b : balance_loss) b = flat[i++] / W;
    for (auto& z : z_loss) z = flat[i++] / W;
}

double StepTotals::load_imbalance() const {
    double worst = 0;
    for (const auto& layer : routed) {
        int64_t total = 0, most = 0;
        for (int64_t c : layer) {
            total += c;
            most = std::max(most, c);
        }
        if (total > 0) worst = std::max(worst, double(most) * layer.size() / double(total));
    }
    return worst;
}

int64_t StepTotals::total_dropped() const { return std::accumulate(dropped.begin(), dropped.end(), int64_t(0)); }
double StepTotals::total_balance_loss() const { return std::accumulate(balance_loss.begin(), balance_loss.end(), 0.0); }
double StepTotals::total_z_loss() const { return std::accumulate(z_loss.begin(), z_loss.end(), 0.0); }

}  // namespace moe
