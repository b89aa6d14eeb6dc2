// What one training step adds up over its micro-batches and over the ranks:
// loss, aux, dropped slots, each layer's expert loads, and whether a stop
// signal reached any rank.
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
    double loss = 0, aux = 0;
    int64_t dropped = 0;
    std::vector<std::vector<int64_t>> routed;  // [L][E]
    bool stop = false;  // a stop signal reached some rank: all stop after this step

    // One micro-batch of a step of `accumulation`.
    void add(const ForwardResult& r, int accumulation);
    // Sums over the world: loss and aux become means over the ranks.
    void reduce(const ProcessGroups* groups);
    // The busiest expert's load over the mean, the worst layer: 1.0 is
    // perfect balance.
    double load_imbalance() const;
};

}  // namespace moe
