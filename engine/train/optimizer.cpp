#include "engine/train/optimizer.h"

#include <algorithm>
#include <cmath>

namespace moe {

double AdamW::clip_scale(double grad_norm) const {
    if (cfg_.grad_clip <= 0 || grad_norm <= cfg_.grad_clip) return 1.0;
    return cfg_.grad_clip / (grad_norm + 1e-6);
}

void AdamW::step(int64_t step, double lr, double grad_scale) {
    AdamWParams a;
    a.lr = lr;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    a.eps = cfg_.eps;
    a.step = step;
    a.grad_scale = grad_scale;
    Ops& ops = params_.ops();
    for (Param& p : params_.all()) {
        a.weight_decay = p.decay ? cfg_.weight_decay : 0.0;
        if (!p.split()) {
            ops.adamw_step(p.value, p.grad, p.m, p.v, p.work, a);
            continue;
        }
        // ZeRO-1: this rank updates its chunk, then the group's chunks of the
        // working copy are gathered (the chunk is the working copy itself when
        // the compute reads the master's dtype).
        const int64_t b = p.chunk_begin(), e = b + p.chunk;
        const Tensor work = p.work_flat.rows(b, e);
        ops.adamw_step(p.value, p.grad_flat.rows(b, e), p.m, p.v, work.data == p.value.data ? Tensor{} : work, a);
        p.shards.comm->all_gather(work.data, p.work_flat.data, p.chunk, work.dtype);
    }
}

}  // namespace moe
