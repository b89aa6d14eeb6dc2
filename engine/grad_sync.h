// Data-parallel gradient averaging and the global gradient norm. Replicated
// parameters are averaged over the world; an expert's gradient already sums
// the tokens of its EP group (they came through the all-to-all), so it is
// summed over the expert-data-parallel group and divided by the world size.
#pragma once
#include "comm/process_groups.h"
#include "engine/parameters.h"

namespace moe {

// groups may be null (one process): then nothing to do.
void average_gradients(ParameterSet& params, const ProcessGroups* groups);
// sqrt of the sum of squared gradients of the whole model, over all ranks
// (after average_gradients: replicated gradients are equal everywhere, expert
// gradients are split over the EP group).
double global_grad_norm(ParameterSet& params, const ProcessGroups* groups);

}  // namespace moe
