// Chooses experts for each token (MODEL.md "Routers"): the learned top-k
// softmax router with its Switch load-balancing and z-losses, or the
// token_id router (expert = token id mod E, weight 1, no parameters).
#pragma once
#include <vector>

#include "engine/arena.h"
#include "engine/config.h"
#include "engine/parameters.h"
#include "kernels/routing_plan.h"

namespace moe {

struct RouterLosses {
    double aux = 0;     // load-balancing loss (already weighted)
    double z_loss = 0;  // router z-loss (already weighted)
};

class Router {
public:
    Router(const ModelConfig& cfg, ParameterSet& params, int layer);
    // stats: F64 [E+1] on the backend where forward leaves the learned
    // router's statistics (empty for token_id).
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor stats);

    // Chooses experts for x[N,H]: fills topk_w() and, learned, topk_idx() on
    // the backend, token_id, token_experts() on the host. The learned router
    // leaves its statistics in stats for losses().
    void forward(Ops& ops, Tensor x, const int32_t* ids);
    // The slots each expert got, which the aux loss and its gradient weigh.
    void set_load(const RoutingCounts& counts);
    // This micro-batch's losses from the stats forward left, read back to
    // the host (E+1 values).
    RouterLosses losses(const double* stats) const;
    // dx += router's input gradient given dtopk_w; loss_scale weights the
    // losses; the weight's gradient is written as grads says.
    void backward(Ops& ops, Tensor x, Tensor dtopk_w, Tensor dx, double loss_scale, Write grads);

    Tensor topk_w() const { return topk_w_; }
    Tensor topk_idx() const { return topk_idx_; }  // I32 [N,k], learned
    const std::vector<int32_t>& token_experts() const { return token_experts_; }  // [N], token_id
    bool learned() const { return weight_ != nullptr; }

private:
    const MoeConfig& cfg_;
    Param* weight_ = nullptr;  // [E, H], learned router only
    // logits_ to dlogits_ in fp32 (stat); dlogits_act_ feeds the matmul
    // backward (dlogits_ itself when the dtypes agree).
    Tensor logits_, probs_, lse_, topk_idx_, topk_w_, dlogits_, dlogits_act_, stats_;
    std::vector<int32_t> token_experts_;
    std::vector<double> aux_coef_;  // d aux / d probs[t, e], per expert
    double z_coef_ = 0;
    bool ones_written_ = false;  // token_id: topk_w is constant 1
};

}  // namespace moe
