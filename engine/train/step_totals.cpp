#include "engine/train/step_totals.h"

#include <algorithm>

namespace moe {

int world_size(const ProcessGroups* groups) { return groups ? groups->world_size() : 1; }

void sum_over_world(std::vector<double>& v, const ProcessGroups* groups) {
    if (world_size(groups) > 1) groups->world->all_reduce(v.data(), int64_t(v.size()), DType::F64, ReduceOp::Sum);
}

void StepTotals::add(const ForwardResult& r, int accumulation) {
    loss += r.loss / accumulation;
    aux += r.aux / accumulation;
    dropped += r.dropped;
    if (routed.empty()) routed.assign(r.routed.size(), std::vector<int64_t>(r.routed.empty() ? 0 : r.routed[0].size(), 0));
    for (size_t l = 0; l < r.routed.size(); ++l)
        for (size_t e = 0; e < r.routed[l].size(); ++e) routed[l][e] += r.routed[l][e];
}

void StepTotals::reduce(const ProcessGroups* groups) {
    std::vector<double> flat = {loss, aux, double(dropped), double(stop)};
    for (const auto& layer : routed) flat.insert(flat.end(), layer.begin(), layer.end());
    sum_over_world(flat, groups);
    const int W = world_size(groups);
    loss = flat[0] / W;
    aux = flat[1] / W;
    dropped = int64_t(flat[2]);
    stop = flat[3] > 0;
    size_t i = 4;
    for (auto& layer : routed)
        for (auto& c : layer) c = int64_t(flat[i++]);
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

}  // namespace moe
