// AdamW over the parameter set (decay on 2-D weights only), global grad-norm
// clipping, and the learning-rate schedule (linear warmup, cosine to min_lr).
#pragma once
#include <cstdint>

#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe {

// lr for 0-based step of total_steps.
double learning_rate(const OptimizerConfig& cfg, int64_t step, int64_t total_steps);

class AdamW {
public:
    AdamW(const OptimizerConfig& cfg, ParameterSet& params) : cfg_(cfg), params_(params) {}
    // The factor that scales gradients of norm grad_norm down to grad_clip.
    double clip_scale(double grad_norm) const;
    // One update with 1-based step; gradients are multiplied by grad_scale.
    void step(int64_t step, double lr, double grad_scale);

private:
    const OptimizerConfig& cfg_;
    ParameterSet& params_;
};

}  // namespace moe
