#include "engine/router.h"

#include <string>

namespace moe {

Router::Router(const ModelConfig& cfg, ParameterSet& params, int layer) : cfg_(cfg.moe) {
    if (cfg_.router == "learned")
        weight_ = &params.add("layers." + std::to_string(layer) + ".moe.router.weight",
                              {cfg_.num_experts, cfg.hidden_size}, InitSpec::normal(cfg.init_std), true);
}

void Router::carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N) {
    const int64_t E = cfg_.num_experts, k = cfg_.top_k;
    topk_w_ = acts.take(pr.stat, {N, k});
    expert_of_slot_.resize(N * k);
    if (!learned()) return;
    logits_ = acts.take(pr.stat, {N, E});
    probs_ = acts.take(pr.stat, {N, E});
    lse_ = acts.take(pr.stat, {N});
    topk_idx_ = acts.take(DType::I32, {N, k});
    dlogits_ = scratch.take(pr.stat, {N, E});
    dlogits_act_ = pr.act == pr.stat ? dlogits_ : scratch.take(pr.act, {N, E});
}

void Router::forward(Ops& ops, Tensor x, const int32_t* ids) {
    const int64_t N = x.dim(0);
    if (!learned()) {
        // token_id: one expert per token, weight 1.
        for (int64_t t = 0; t < N; ++t) expert_of_slot_[t] = ids[t] % cfg_.num_experts;
        if (ones_written_) return;
        ones_written_ = true;
        if (topk_w_.dtype == DType::F64) {
            std::vector<double> ones(N, 1.0);
            ops.copy_from_host(topk_w_, ones.data());
        } else {
            std::vector<float> ones(N, 1.0f);
            ops.copy_from_host(topk_w_, ones.data());
        }
        return;
    }
    ops.matmul_forward(logits_, x, weight_->work, {});
    ops.router_forward(probs_, lse_, topk_idx_, topk_w_, logits_, cfg_.normalize_top_k);
    ops.copy_to_host(expert_of_slot_.data(), topk_idx_);
}

RouterLosses Router::losses(Ops& ops, const RoutingPlan& plan) {
    RouterLosses out;
    if (!learned()) return out;
    const int E = cfg_.num_experts;
    const double N = plan.num_tokens, slots = N * plan.top_k;
    std::vector<double> prob_sums;
    double lse_sq = 0;
    ops.router_stats(prob_sums, lse_sq, probs_, lse_);
    // Switch: aux = w * E * sum_e f_e * P_e, f_e = share of slots routed to e
    // (no gradient), P_e = mean_t p[t, e].
    aux_coef_.assign(E, 0.0);
    for (int e = 0; e < E; ++e) {
        const double f = plan.routed(e) / slots;
        out.aux += cfg_.load_balancing_weight * E * f * prob_sums[e] / N;
        aux_coef_[e] = cfg_.load_balancing_weight * E * f / N;
    }
    out.z_loss = cfg_.z_loss_weight * lse_sq / N;
    z_coef_ = cfg_.z_loss_weight / N;
    return out;
}

void Router::backward(Ops& ops, Tensor x, Tensor dtopk_w, Tensor dx, double loss_scale) {
    if (!learned()) return;
    std::vector<double> aux_coef(aux_coef_);
    for (double& c : aux_coef) c *= loss_scale;
    ops.zero(dlogits_);
    ops.router_backward(dlogits_, dtopk_w, probs_, lse_, topk_idx_, topk_w_, cfg_.normalize_top_k, aux_coef,
                        z_coef_ * loss_scale);
    if (dlogits_act_.data != dlogits_.data) ops.copy(dlogits_act_, dlogits_);
    ops.matmul_backward(dx, weight_->grad, {}, dlogits_act_, x, weight_->work);
}

}  // namespace moe
