// The learning rate of each step (docs/MODEL-OPTIONS.md "Learning-rate
// schedules"): linear warmup to optimizer.lr, then cosine decay to min_lr,
// constant, or warmup-stable-decay.
#pragma once
#include <cstdint>

#include "engine/config/config.h"

namespace moe {

// lr for 0-based step of total_steps.
double learning_rate(const OptimizerConfig& cfg, int64_t step, int64_t total_steps);

}  // namespace moe
