#include "engine/grad_sync.h"

#include <algorithm>
#include <cmath>

namespace moe {

namespace {
Communicator& group_of(const Param& p, const ProcessGroups& groups) {
    return p.is_expert_stack() ? *groups.expert_dp : *groups.world;
}
}  // namespace

void GradientReducer::reduce(Param& p) {
    Communicator& group = group_of(p, *groups_);
    // The communicator reduces in place in the gradient's own memory.
    if (group.size() > 1) group.all_reduce_async(p.grad.data, p.grad.numel(), p.grad.dtype, ReduceOp::Sum);
    reduced_.push_back(&p);
}

void GradientReducer::ready(const std::vector<Param*>& bucket) {
    if (!groups_ || groups_->world_size() == 1) return;
    for (Param* p : bucket) reduce(*p);
}

void GradientReducer::finish() {
    if (!groups_ || groups_->world_size() == 1) return;
    for (Param& p : params_.all())
        if (std::find(reduced_.begin(), reduced_.end(), &p) == reduced_.end()) reduce(p);
    groups_->world->wait_async();
    groups_->expert_dp->wait_async();
    const double inv_world = 1.0 / groups_->world_size();
    for (Param& p : params_.all()) params_.ops().scale(p.grad, inv_world);
    reduced_.clear();
}

void average_gradients(ParameterSet& params, const ProcessGroups* groups) { GradientReducer(params, groups).finish(); }

double global_grad_norm(ParameterSet& params, const ProcessGroups* groups) {
    std::vector<Tensor> grads;
    for (const Param& p : params.all()) grads.push_back(p.grad);
    const std::vector<double> sums = params.ops().sum_squares(grads);  // one wait for all
    double replicated = 0, experts = 0;
    for (size_t i = 0; i < sums.size(); ++i) (params.all()[i].is_expert_stack() ? experts : replicated) += sums[i];
    if (groups && groups->ep_size() > 1) groups->ep->all_reduce(&experts, 1, DType::F64, ReduceOp::Sum);
    return std::sqrt(replicated + experts);
}

}  // namespace moe
