// The learned router (MODEL.md "Routers", Mixtral/Switch, and
// docs/MODEL-OPTIONS.md "Router options"): logits = x W^T in fp32, softmax or
// sigmoid scores, the k largest (within the token's best groups when
// group-limited), their scores as weights (renormalised unless
// normalize_top_k is false), the load-balancing loss and the z-loss; with
// model.moe.expert_bias_rate, an expert bias in the choice that follows the
// loads (auxiliary-loss-free balancing).
#pragma once
#include <vector>

#include "engine/moe/router.h"

namespace moe {

// How the config's learned router scores and chooses (no bias).
RouterScoring router_scoring(const MoeConfig& cfg);

class LearnedRouter : public Router {
public:
    LearnedRouter(const ModelConfig& cfg, ParameterSet& params, int layer);
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor stats) override;
    RouterChoice forward(Ops& ops, Tensor x, const int32_t* ids) override;
    void set_load(const RoutingCounts& counts) override;
    void balance_over(const std::vector<int64_t>& slots) override;
    RouterLosses losses(const double* stats) const override;
    bool weights_have_gradient() const override { return true; }
    void backward(Ops& ops, Tensor x, Tensor dweights, Tensor dx, double loss_scale, Write grads) override;
    // b_e += rate * sign(mean load - routed[e]) (docs/MODEL-OPTIONS.md).
    void after_step(Ops& ops, const std::vector<int64_t>& routed) override;

private:
    const MoeConfig& cfg_;
    RouterScoring scoring_;
    Param* weight_;  // [E, H]
    Param* bias_;    // state [E]: the expert bias, or null without one
    Tensor bias_step_;  // scratch [E]: after a step, the signs the bias moves by
    // logits_ to dlogits_ in fp32 (stat); dlogits_act_ feeds the matmul
    // backward (dlogits_ itself when the dtypes agree).
    Tensor logits_, probs_, lse_, topk_idx_, topk_w_, dlogits_, dlogits_act_, stats_;
    std::vector<double> aux_coef_;  // d aux / d probs[t, e], per expert
    int64_t tokens_ = 0;            // N of the last forward
    double z_coef_ = 0;
};

}  // namespace moe
