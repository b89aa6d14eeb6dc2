// Data-parallel gradient averaging and the global gradient norm. Replicated
// parameters are averaged over the world; an expert's gradient already sums
// the tokens of its EP group (they came through the all-to-all), so it is
// summed over the expert-data-parallel group and divided by the world size.
#pragma once
#include <vector>

#include "comm/process_groups.h"
#include "engine/model/model.h"
#include "engine/params/parameters.h"

namespace moe {

// Averages gradients in buckets as the backward finishes them: the model
// hands over each layer's parameters once their gradients are final
// (ready()), their all-reduce starts at once (on NCCL it runs alongside the
// rest of the backward), and finish() reduces what is left, waits, and
// divides by the world size. A parameter whose optimizer state is split is
// reduce-scattered instead: only its chunk of the average is here.
// groups null or a world of one: nothing moves.
class GradientReducer {
public:
    GradientReducer(ParameterSet& params, const ProcessGroups* groups) : params_(params), groups_(groups) {}
    void ready(const std::vector<Param*>& bucket);
    // ready() as the model's backward takes it.
    BucketReady bucket_ready() {
        return [this](const std::vector<Param*>& bucket) { ready(bucket); };
    }
    void finish();

private:
    ParameterSet& params_;
    const ProcessGroups* groups_;
    std::vector<const Param*> reduced_;
};

// The gradient this rank holds reduced after finish(): the whole, or its
// chunk when the optimizer state is split.
Tensor own_gradient(const Param& p);

// sqrt of the sum of squared gradients of the whole model, over all ranks
// (after the reducer's finish(): replicated gradients are equal everywhere,
// expert gradients are split over the EP group; split ones in chunks).
double global_grad_norm(ParameterSet& params, const ProcessGroups* groups);

}  // namespace moe
