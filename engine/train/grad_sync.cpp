#include "engine/train/grad_sync.h"

#include <algorithm>
#include <cmath>

namespace moe {

// One call per group: NCCL launches a group's part of the bucket as one.
void GradientReducer::ready(const std::vector<Param*>& bucket) {
    if (!groups_ || groups_->world_size() == 1) return;
    std::vector<ReduceBuffer> replicated, experts;
    for (Param* p : bucket) {
        // The communicator reduces in place in the gradient's own memory.
        (p->is_expert_stack() ? experts : replicated).push_back({p->grad.data, p->grad.numel(), p->grad.dtype});
        reduced_.push_back(p);
    }
    if (!replicated.empty()) groups_->world->all_reduce_async(replicated, ReduceOp::Sum);
    if (!experts.empty() && groups_->expert_dp->size() > 1)
        groups_->expert_dp->all_reduce_async(experts, ReduceOp::Sum);
}

void GradientReducer::finish() {
    if (!groups_ || groups_->world_size() == 1) return;
    std::vector<Param*> rest;
    for (Param& p : params_.all())
        if (std::find(reduced_.begin(), reduced_.end(), &p) == reduced_.end()) rest.push_back(&p);
    ready(rest);
    groups_->world->wait_async();
    groups_->expert_dp->wait_async();
    const double inv_world = 1.0 / groups_->world_size();
    for (Param& p : params_.all()) params_.ops().scale(p.grad, inv_world);
    reduced_.clear();
}

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
