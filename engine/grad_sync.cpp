#include "engine/grad_sync.h"

#include <cmath>

namespace moe {

void average_gradients(ParameterSet& params, const ProcessGroups* groups) {
    if (!groups || groups->world_size() == 1) return;
    Ops& ops = params.ops();
    const double inv_world = 1.0 / groups->world_size();
    for (Param& p : params.all()) {
        Communicator& group = p.is_expert_stack() ? *groups->expert_dp : *groups->world;
        // The communicator reduces in place in the gradient's own memory.
        if (group.size() > 1) group.all_reduce(p.grad.data, p.grad.numel(), p.grad.dtype, ReduceOp::Sum);
        ops.scale(p.grad, inv_world);
    }
}

double global_grad_norm(ParameterSet& params, const ProcessGroups* groups) {
    double replicated = 0, experts = 0;
    for (const Param& p : params.all()) (p.is_expert_stack() ? experts : replicated) += params.ops().sum_squares(p.grad);
    if (groups && groups->ep_size() > 1) groups->ep->all_reduce(&experts, 1, DType::F64, ReduceOp::Sum);
    return std::sqrt(replicated + experts);
}

}  // namespace moe
