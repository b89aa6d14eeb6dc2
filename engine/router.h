// Chooses experts for each token (MODEL.md "Routers"): the learned top-k
// softmax router with its Switch load-balancing and z-losses, or the
// token_id router (expert = token id mod E, weight 1, no parameters).
#pragma once
#include <vector>

#include "comm/routing_plan.h"
#include "engine/arena.h"
#include "engine/config.h"
#include "engine/parameters.h"

namespace moe {

struct RouterLosses {
    double aux = 0;     // load-balancing loss (already weighted)
    double z_loss = 0;  // router z-loss (already weighted)
};

class Router {
public:
    Router(const ModelConfig& cfg, ParameterSet& params, int layer);
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N);

    // Chooses experts for x[N,H]: fills topk_w() and expert_of_slot() [N*k].
    void forward(Ops& ops, Tensor x, const int32_t* ids);
    // Losses of this micro-batch; the plan says how many slots each expert got.
    RouterLosses losses(Ops& ops, const RoutingPlan& plan);
    // dx += router's input gradient given dtopk_w; loss_scale weights the losses.
    void backward(Ops& ops, Tensor x, Tensor dtopk_w, Tensor dx, double loss_scale);

    Tensor topk_w() const { return topk_w_; }
    const std::vector<int32_t>& expert_of_slot() const { return expert_of_slot_; }
    bool learned() const { return weight_ != nullptr; }

private:
    const MoeConfig& cfg_;
    Param* weight_ = nullptr;  // [E, H], learned router only
    // logits_ to dlogits_ in fp32 (stat); dlogits_act_ feeds the matmul
    // backward (dlogits_ itself when the dtypes agree).
    Tensor logits_, probs_, lse_, topk_idx_, topk_w_, dlogits_, dlogits_act_;
    std::vector<int32_t> expert_of_slot_;
    std::vector<double> aux_coef_;  // d aux / d probs[t, e], per expert
    double z_coef_ = 0;
    bool ones_written_ = false;  // token_id: topk_w is constant 1
};

}  // namespace moe
