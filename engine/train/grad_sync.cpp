#include "engine/train/grad_sync.h"

#include <algorithm>
#include <cmath>

namespace moe {

// One call per group and kind: NCCL launches each as one. A split
// parameter's gradient is reduce-scattered (its chunk of the sum lands here),
// the others all-reduced; in place in the gradient's own memory either way.
void GradientReducer::ready(const std::vector<Param*>& bucket) {
    if (!groups_ || groups_->world_size() == 1) return;
    std::vector<ReduceBuffer> replicated, experts, replicated_split, experts_split;
    for (Param* p : bucket) {
        const bool expert = p->is_expert_stack();
        if (p->split())
            (expert ? experts_split : replicated_split)
                .push_back({p->grad_flat.data, p->grad_flat.numel(), p->grad_flat.dtype});
        else
            (expert ? experts : replicated).push_back({p->grad.data, p->grad.numel(), p->grad.dtype});
        reduced_.push_back(p);
    }
    if (!replicated.empty()) groups_->world->all_reduce_async(replicated, ReduceOp::Sum);
    if (!replicated_split.empty()) groups_->world->reduce_scatter_async(replicated_split, ReduceOp::Sum);
    if (groups_->expert_dp->size() == 1) return;
    if (!experts.empty()) groups_->expert_dp->all_reduce_async(experts, ReduceOp::Sum);
    if (!experts_split.empty()) groups_->expert_dp->reduce_scatter_async(experts_split, ReduceOp::Sum);
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
    for (Param& p : params_.all()) params_.ops().scale(own_gradient(p), inv_world);
    reduced_.clear();
}

Tensor own_gradient(const Param& p) {
    return p.split() ? p.grad_flat.rows(p.chunk_begin(), p.chunk_begin() + p.chunk) : p.grad;
}

double global_grad_norm(ParameterSet& params, const ProcessGroups* groups) {
    std::vector<Tensor> grads;
    for (const Param& p : params.all()) grads.push_back(own_gradient(p));
    const std::vector<double> sums = params.ops().sum_squares(grads);  // one wait for all
    double replicated = 0, experts = 0;
    for (size_t i = 0; i < sums.size(); ++i) (params.all()[i].is_expert_stack() ? experts : replicated) += sums[i];
    if (params.split() && groups && groups->world_size() > 1) {
        // Split, every element is held by one rank of the world: the replicated
        // ones in world chunks, the experts in expert-DP chunks of EP shares
        // (or whole, distinct per EP rank, where the expert-DP group is one).
        double total = replicated + experts;
        groups->world->all_reduce(&total, 1, DType::F64, ReduceOp::Sum);
        return std::sqrt(total);
    }
    if (groups && groups->ep_size() > 1) groups->ep->all_reduce(&experts, 1, DType::F64, ReduceOp::Sum);
    return std::sqrt(replicated + experts);
}

}  // namespace moe
