// What one training step adds up over its micro-batches and over the ranks:
// loss, each layer's expert loads, dropped slots and router losses, and
// whether a stop signal reached any rank.
#pragma once
#include <cstdint>
#include <vector>

#include "comm/process_groups.h"
#include "engine/model/model.h"

namespace moe {

int world_size(const ProcessGroups* groups);
// Sums v over all ranks, in place.
void sum_over_world(std::vector<double>& v, const ProcessGroups* groups);

struct StepTotals {
    double loss = 0;  // mean cross-entropy
    double aux = 0;   // balance + z losses, all layers
    std::vector<std::vector<int64_t>> routed;  // [L][E] token-slots that chose each expert
    std::vector<int64_t> dropped;              // [L] slots dropped by capacity
    std::vector<double> balance_loss, z_loss;  // [L] weighted, means over micro-batches and ranks
    bool stop = false;  // a stop signal reached some rank: all stop after this step

    // One micro-batch of a step of `accumulation`.
    void add(const ForwardResult& r, int accumulation);
    // Sums over the world: the losses become means over the ranks.
    void reduce(const ProcessGroups* groups);
    // The busiest expert's load over the mean, the worst layer: 1.0 is
    // perfect balance.
    double load_imbalance() const;
    int64_t total_dropped() const;
    double total_balance_loss() const;
    double total_z_loss() const;
};

}  // namespace moe
