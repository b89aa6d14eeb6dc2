// A sparse MoE layer: router -> token dispatcher -> experts -> combine, plus
// the shared experts every token passes through, when the model has them.
#pragma once
#include <memory>
#include <optional>
#include <vector>

#include "comm/group_place.h"
#include "engine/moe/experts.h"
#include "engine/run/phase_times.h"
#include "engine/moe/router.h"
#include "engine/moe/token_dispatcher.h"

namespace moe {

// What one forward of the layer routed, for logs and telemetry.
struct MoeStats {
    std::vector<int64_t> routed;  // [E] token-slots that chose each expert (dropped ones too)
    int64_t dropped = 0;          // slots dropped by capacity
    RouterLosses losses;          // load-balancing and z losses, weighted (learned router)
};

class MoeLayer {
public:
    // ep: how the experts split over the expert-parallel group.
    MoeLayer(const ModelConfig& cfg, ParameterSet& params, int layer, const GroupPlace& ep);
    // router_stats: F64 [E+1] on the backend for the learned router's
    // statistics (empty for token_id); recompute_experts: see Experts::carve.
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor router_stats,
               bool recompute_experts);

    // y[N,H] = residual + moe(x[N,H]) (routed experts' weighted sum + shared
    // experts', rounded, then added to the residual in the combine's pass), N
    // at most the rows carved; ids[N] (host) feed the token_id router.
    MoeStats forward(Ops& ops, Tensor x, const int32_t* ids, Tensor residual, Tensor y);
    // The router's aux and z losses of the last forward, from the stats it
    // left in router_stats, read back (E+1 values).
    RouterLosses router_losses(const double* stats) const { return router_->losses(stats); }
    // dx = input gradient of sum(dy * y) + loss_scale * (aux + z)
    // (overwritten: the layer is dx's only writer); parameter gradients are
    // written as grads says.
    void backward(Ops& ops, Tensor x, Tensor dy, Tensor dx, double loss_scale, Write grads);
    // The balancing loss over these slots per expert (Router::balance_over).
    void balance_over(const std::vector<int64_t>& slots) { router_->balance_over(slots); }
    // After an optimizer step: the router's state follows the step's loads
    // (routed[E] over all micro-batches and ranks).
    void after_step(Ops& ops, const std::vector<int64_t>& routed) { router_->after_step(ops, routed); }
    // Times the experts and the routing apart (null: no timing).
    void set_phase_times(PhaseTimes* times) { times_ = times; }

private:
    int64_t H_, k_;
    std::unique_ptr<Router> router_;
    TokenDispatcher dispatcher_;
    Experts experts_;
    std::optional<Experts> shared_;  // the shared experts, fused (none without)
    std::vector<int64_t> all_rows_;  // {0, N}: the shared experts' one group
    Tensor expert_in_;  // this micro-batch's rows for the local experts (saved)
    Tensor dweights_;
    PhaseTimes* times_ = nullptr;
};

}  // namespace moe
