// AdamW over the parameter set (decay on 2-D weights only) and global
// grad-norm clipping.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe {

class AdamW {
public:
    AdamW(const OptimizerConfig& cfg, ParameterSet& params) : cfg_(cfg), params_(params) {}
    // The factor that scales gradients of norm grad_norm down to grad_clip.
    double clip_scale(double grad_norm) const;
    // One update with 1-based step; gradients are multiplied by grad_scale.
    void step(int64_t step, double lr, double grad_scale);
    // Every parameter as one step updates it: a split one by this rank's
    // chunk (ZeRO-1), with its decay.
    std::vector<AdamWTensor> tensors() const;

private:
    const OptimizerConfig& cfg_;
    ParameterSet& params_;
};

}  // namespace moe
