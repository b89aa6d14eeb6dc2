// The seam between a MoE layer and the way it chooses experts (MODEL.md
// "Routers"). Each kind is one class behind it: the learned top-k softmax
// router (learned_router.h) and the token_id router (token_id_router.h);
// make_router builds the one the config names.
#pragma once
#include <memory>
#include <vector>

#include "engine/config/config.h"
#include "engine/params/arena.h"
#include "engine/params/parameters.h"
#include "kernels/routing_plan.h"

namespace moe {

struct RouterLosses {
    double aux = 0;     // load-balancing loss (already weighted)
    double z_loss = 0;  // router z-loss (already weighted)
};

// What a router chose for N tokens: each token's k experts, decided either on
// the backend (planned there, the host waits only for the counts) or on the
// host (known from the ids before any device work), and the weights that
// combine the experts' outputs.
struct RouterChoice {
    Tensor experts;                                      // I32 [N, k] on the backend, or empty
    const std::vector<int32_t>* host_experts = nullptr;  // [N * k] on the host, or null
    Tensor weights;                                      // [N, k] combine weights
};

class Router {
public:
    virtual ~Router() = default;
    // stats: F64 [E+1] on the backend where forward leaves the statistics its
    // losses are computed from (empty for a router without losses).
    virtual void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor stats) = 0;
    // Chooses experts for x[N,H], N at most the rows carved; ids[N] (host)
    // are the batch's input ids.
    virtual RouterChoice forward(Ops& ops, Tensor x, const int32_t* ids) = 0;
    // The slots each expert got, which the losses and their gradients weigh.
    virtual void set_load(const RoutingCounts& counts) = 0;
    // The balancing loss's shares f_e from these slots per expert [E]
    // instead of the micro-batch's (balance_scope global_batch: the step's
    // so far, over all ranks), until the next set_load.
    virtual void balance_over(const std::vector<int64_t>& /*slots*/) {}
    // This micro-batch's losses from the stats forward left, read back to
    // the host (E+1 values).
    virtual RouterLosses losses(const double* stats) const = 0;
    // Whether the combine weights depend on parameters: then the layer
    // computes their gradient and hands it to backward().
    virtual bool weights_have_gradient() const = 0;
    // dx += the router's input gradient given dweights; loss_scale weights the
    // losses; parameter gradients are written as grads says.
    virtual void backward(Ops& ops, Tensor x, Tensor dweights, Tensor dx, double loss_scale, Write grads) = 0;
    // After an optimizer step, the router's state follows the step's loads:
    // routed[E], the slots that chose each expert over the step's
    // micro-batches and all ranks (the same on every rank). Stateless routers
    // keep nothing.
    virtual void after_step(Ops&, const std::vector<int64_t>& /*routed*/) {}
};

// The router model.moe.router names, its parameters added to params.
std::unique_ptr<Router> make_router(const ModelConfig& cfg, ParameterSet& params, int layer);

}  // namespace moe
