// Moves token vectors to their experts and back (Megatron's token
// dispatcher): builds the routing plan, permutes rows into expert order, and
// combines expert outputs weighted by the router. The backward replays the
// same plan. On one process all experts are local; expert parallelism adds
// its all-to-all exchange here.
#pragma once
#include <optional>
#include <vector>

#include "comm/routing_plan.h"
#include "engine/arena.h"
#include "kernels/ops.h"

namespace moe {

class TokenDispatcher {
public:
    TokenDispatcher(int num_experts, int top_k, std::optional<double> capacity_factor)
        : E_(num_experts), k_(top_k), capacity_factor_(capacity_factor) {}
    void carve(Arena& acts, int64_t N);

    // Plans routing from expert_of_slot[N*k] and gathers x[N,H] into xe's
    // first plan().rows() rows. Returns those rows.
    Tensor dispatch(Ops& ops, const std::vector<int32_t>& expert_of_slot, Tensor x, Tensor xe);
    // y[N,H] = sum of the weighted expert outputs ye (rows of the plan).
    void combine(Ops& ops, Tensor ye, Tensor w, Tensor y);

    void combine_backward(Ops& ops, Tensor dy, Tensor ye, Tensor w, Tensor dye, Tensor dw);
    void dispatch_backward(Ops& ops, Tensor dxe, Tensor dx);

    const RoutingPlan& plan() const { return plan_; }

private:
    int E_, k_;
    std::optional<double> capacity_factor_;
    RoutingPlan plan_;
    Tensor slot_row_, row_token_;  // plan indices on the device
};

}  // namespace moe
