#include "engine/train/optimizer.h"

#include <algorithm>
#include <cmath>

namespace moe {

double AdamW::clip_scale(double grad_norm) const {
    if (cfg_.grad_clip <= 0 || grad_norm <= cfg_.grad_clip) return 1.0;
    return cfg_.grad_clip / (grad_norm + 1e-6);
}

std::vector<AdamWTensor> AdamW::tensors() const {
    std::vector<AdamWTensor> list;
    for (Param& p : params_.all()) {
        const double decay = p.decay ? cfg_.weight_decay : 0.0;
        if (!p.split()) {
            list.push_back({p.value, p.grad, p.m, p.v, p.work, decay});
            continue;
        }
        // ZeRO-1: this rank updates its chunk (the chunk of the working copy
        // is the master itself when the compute reads the master's dtype).
        const int64_t b = p.chunk_begin(), e = b + p.chunk;
        list.push_back({p.value, p.grad_flat.rows(b, e), p.m, p.v, p.work_flat.rows(b, e), decay});
    }
    return list;
}

void AdamW::step(int64_t step, double lr, double grad_scale) {
    AdamWParams a;
    a.lr = lr;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    a.eps = cfg_.eps;
    a.step = step;
    a.grad_scale = grad_scale;
    params_.ops().adamw_step(tensors(), a);
    // Then the group's chunks of the split working copies are gathered.
    for (Param& p : params_.all()) {
        if (!p.split()) continue;
        const Tensor mine = p.work_flat.rows(p.chunk_begin(), p.chunk_begin() + p.chunk);
        p.shards.comm->all_gather(mine.data, p.work_flat.data, p.chunk, mine.dtype);
    }
}

}  // namespace moe
