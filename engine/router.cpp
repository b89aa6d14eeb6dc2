#include "engine/router.h"

#include <string>

namespace moe {

Router::Router(const ModelConfig& cfg, ParameterSet& params, int layer) : cfg_(cfg.moe) {
    if (cfg_.router == "learned")
        weight_ = &params.add("layers." + std::to_string(layer) + ".moe.router.weight",
                              {cfg_.num_experts, cfg.hidden_size}, InitSpec::normal(cfg.init_std), true);
}

void Router::carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor stats) {
    const int64_t E = cfg_.num_experts, k = cfg_.top_k;
    topk_w_ = acts.take(pr.stat, {N, k});
    if (!learned()) {
        token_experts_.resize(N);
        return;
    }
    logits_ = acts.take(pr.stat, {N, E});
    probs_ = acts.take(pr.stat, {N, E});
    lse_ = acts.take(pr.stat, {N});
    topk_idx_ = acts.take(DType::I32, {N, k});
    dlogits_ = scratch.take(pr.stat, {N, E});
    dlogits_act_ = pr.act == pr.stat ? dlogits_ : scratch.take(pr.act, {N, E});
    stats_ = stats;
}

void Router::forward(Ops& ops, Tensor x, const int32_t* ids) {
    const int64_t N = x.dim(0);
    if (!learned()) {
        // token_id: one expert per token, weight 1.
        for (int64_t t = 0; t < N; ++t) token_experts_[t] = ids[t] % cfg_.num_experts;
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
    ops.router_stats(stats_, probs_, lse_);
}

void Router::set_load(const RoutingCounts& counts) {
    if (!learned()) return;
    // Switch: aux = w * E * sum_e f_e * P_e, f_e = share of slots routed to e
    // (no gradient), P_e = mean_t p[t, e]: aux = sum_e aux_coef[e] * sum_t p[t, e].
    const int E = cfg_.num_experts;
    const double N = counts.num_tokens, slots = N * counts.top_k;
    aux_coef_.assign(E, 0.0);
    for (int e = 0; e < E; ++e) aux_coef_[e] = cfg_.load_balancing_weight * E * (counts.routed(e) / slots) / N;
    z_coef_ = cfg_.z_loss_weight / N;
}

RouterLosses Router::losses(const double* stats) const {
    RouterLosses out;
    if (!learned()) return out;
    const int E = cfg_.num_experts;
    for (int e = 0; e < E; ++e) out.aux += aux_coef_[e] * stats[e];
    out.z_loss = z_coef_ * stats[E];
    return out;
}

void Router::backward(Ops& ops, Tensor x, Tensor dtopk_w, Tensor dx, double loss_scale, Write grads) {
    if (!learned()) return;
    std::vector<double> aux_coef(aux_coef_);
    for (double& c : aux_coef) c *= loss_scale;
    ops.zero(dlogits_);
    ops.router_backward(dlogits_, dtopk_w, probs_, lse_, topk_idx_, topk_w_, cfg_.normalize_top_k, aux_coef,
                        z_coef_ * loss_scale);
    if (dlogits_act_.data != dlogits_.data) ops.copy(dlogits_act_, dlogits_);
    ops.matmul_backward(dx, weight_->grad, {}, dlogits_act_, x, weight_->work, Write::add, grads);
}

}  // namespace moe
