#include "engine/moe/learned_router.h"

#include <string>

namespace moe {

RouterScoring router_scoring(const MoeConfig& cfg) {
    RouterScoring s;
    s.sigmoid = cfg.score == RouterScore::sigmoid;
    s.normalize = cfg.normalize_top_k;
    s.groups = cfg.groups;
    s.group_limit = cfg.group_limit ? cfg.group_limit : cfg.groups;
    return s;
}

LearnedRouter::LearnedRouter(const ModelConfig& cfg, ParameterSet& params, int layer)
    : cfg_(cfg.moe),
      scoring_(router_scoring(cfg.moe)),
      weight_(&params.add("layers." + std::to_string(layer) + ".moe.router.weight",
                          {cfg_.num_experts, cfg.hidden_size}, InitSpec::normal(cfg.init_std), true)),
      bias_(cfg_.expert_bias_rate ? &params.add_state("layers." + std::to_string(layer) + ".moe.router.expert_bias",
                                                      {cfg_.num_experts}, InitSpec::fill(0))
                                  : nullptr) {}

void LearnedRouter::carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor stats) {
    const int64_t E = cfg_.num_experts, k = cfg_.top_k;
    topk_w_ = acts.take(pr.stat, {N, k});
    logits_ = acts.take(pr.stat, {N, E});
    probs_ = acts.take(pr.stat, {N, E});
    lse_ = acts.take(pr.stat, {N});
    topk_idx_ = acts.take(DType::I32, {N, k});
    dlogits_ = scratch.take(pr.stat, {N, E});
    dlogits_act_ = pr.act == pr.stat ? dlogits_ : scratch.take(pr.act, {N, E});
    if (bias_) bias_step_ = scratch.take(pr.stat, {E});
    stats_ = stats;
}

RouterChoice LearnedRouter::forward(Ops& ops, Tensor x, const int32_t*) {
    const int64_t N = x.dim(0);
    const Tensor logits = logits_.rows(0, N), probs = probs_.rows(0, N), lse = lse_.rows(0, N);
    const Tensor topk_idx = topk_idx_.rows(0, N), topk_w = topk_w_.rows(0, N);
    if (bias_) scoring_.bias = bias_->value;
    ops.matmul_forward(logits, x, weight_->work, {});
    ops.router_forward(probs, lse, topk_idx, topk_w, logits, scoring_);
    ops.router_stats(stats_, probs, lse, scoring_);
    return {topk_idx, nullptr, topk_w};
}

void LearnedRouter::set_load(const RoutingCounts& counts) {
    std::vector<int64_t> slots(static_cast<size_t>(cfg_.num_experts));
    for (int e = 0; e < cfg_.num_experts; ++e) slots[size_t(e)] = counts.routed(e);
    tokens_ = counts.num_tokens;
    balance_over(slots);
    z_coef_ = cfg_.z_loss_weight / double(tokens_);
}

void LearnedRouter::balance_over(const std::vector<int64_t>& slots) {
    // Switch: aux = w * E * sum_e f_e * P_e, f_e = share of the slots that
    // chose e (no gradient), P_e = mean_t q[t, e] over this micro-batch's N
    // tokens (the normalised scores): aux = sum_e aux_coef[e] * sum_t q[t, e].
    const int E = cfg_.num_experts;
    double total = 0;
    for (int64_t c : slots) total += double(c);
    const double N = double(tokens_);
    aux_coef_.assign(E, 0.0);
    if (total > 0)
        for (int e = 0; e < E; ++e) aux_coef_[e] = cfg_.load_balancing_weight * E * (double(slots[size_t(e)]) / total) / N;
}

RouterLosses LearnedRouter::losses(const double* stats) const {
    RouterLosses out;
    const int E = cfg_.num_experts;
    for (int e = 0; e < E; ++e) out.aux += aux_coef_[e] * stats[e];
    out.z_loss = z_coef_ * stats[E];
    return out;
}

void LearnedRouter::backward(Ops& ops, Tensor x, Tensor dweights, Tensor dx, double loss_scale, Write grads) {
    std::vector<double> aux_coef(aux_coef_);
    for (double& c : aux_coef) c *= loss_scale;
    ops.zero(dlogits_);
    ops.router_backward(dlogits_, dweights, probs_, lse_, topk_idx_, topk_w_, scoring_, aux_coef,
                        z_coef_ * loss_scale);
    if (dlogits_act_.data != dlogits_.data) ops.copy(dlogits_act_, dlogits_);
    ops.matmul_backward(dx, weight_->grad, {}, dlogits_act_, x, weight_->work, Write::add, grads);
}

namespace {
// sign(mean - c_e) = sign(total - E * c_e), exact in integers; in T.
template <class T> std::vector<T> load_signs(const std::vector<int64_t>& routed) {
    const int64_t E = int64_t(routed.size());
    int64_t total = 0;
    for (int64_t c : routed) total += c;
    std::vector<T> signs(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
        const int64_t gap = total - E * routed[size_t(e)];
        signs[size_t(e)] = T((gap > 0) - (gap < 0));
    }
    return signs;
}
}  // namespace

void LearnedRouter::after_step(Ops& ops, const std::vector<int64_t>& routed) {
    if (!bias_ || *cfg_.expert_bias_rate == 0) return;
    // The signs go up, the backend adds them: nothing waits for the device.
    if (bias_step_.dtype == DType::F64) ops.copy_from_host(bias_step_, load_signs<double>(routed).data());
    else ops.copy_from_host(bias_step_, load_signs<float>(routed).data());
    ops.add(bias_->value, bias_step_, *cfg_.expert_bias_rate);
}

}  // namespace moe
