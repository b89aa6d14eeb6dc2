#include "engine/model/dynamics_layer.h"

#include <cmath>

namespace moe {

namespace {
double logit(double p) { return std::log(p / (1 - p)); }
double inverse_softplus(double y) { return std::log(std::expm1(y)); }
}  // namespace

DynamicsModule::DynamicsModule(const ModelConfig& cfg, ParameterSet& params, const std::string& prefix) {
    const DynamicsConfig& d = cfg.dynamics;
    const int64_t H = cfg.hidden_size, C = d.controller_size;
    // c1 as PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    const double c1_bound = 1.0 / std::sqrt(double(2 * H));
    mu = &params.add(prefix + "mu", {H}, InitSpec::fill((d.mu_min + d.mu_max) / 2), false);
    c1_weight = &params.add(prefix + "c1.weight", {C, 2 * H}, InitSpec::uniform(c1_bound), true);
    c1_bias = &params.add(prefix + "c1.bias", {C}, InitSpec::uniform(c1_bound), false);
    c2_weight = &params.add(prefix + "c2.weight", {3 * H, C}, InitSpec::normal(0.01), true);
    c2_bias = &params.add(prefix + "c2.bias", {3 * H},
                          InitSpec::thirds(logit(d.init_alpha), inverse_softplus(d.init_beta), logit(d.init_gate)),
                          false);
}

DynamicsLayer::DynamicsLayer(const ModelConfig& cfg, DynamicsModule& module)
    : m_(module), H_(cfg.hidden_size), C_(cfg.dynamics.controller_size) {
    const DynamicsConfig& d = cfg.dynamics;
    p_.dt = d.dt;
    p_.beta_max = d.beta_max;
    p_.velocity_max = d.velocity_max;
    p_.mu_min = d.mu_min;
    p_.mu_max = d.mu_max;
}

void DynamicsLayer::carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N) {
    const DType dt = pr.act;
    c1_out_ = acts.take(dt, {N, C_});
    c1_act_ = acts.take(dt, {N, C_});
    dc1_out_ = scratch.take(dt, {N, C_});
    dc1_act_ = scratch.take(dt, {N, C_});
    dctrl_ = scratch.take(dt, {N, 3 * H_});
}

void DynamicsLayer::forward(Ops& ops, Tensor h, Tensor v, Tensor h_out, Tensor v_out) {
    const int64_t N = h.dim(0);  // the rows carved, or fewer (a decoder's new positions)
    const Tensor c1_out = c1_out_.rows(0, N), c1_act = c1_act_.rows(0, N);
    ops.concat_matmul_forward(c1_out, h, v, m_.c1_weight->work, m_.c1_bias->work);  // c1([h | v])
    ops.silu_forward(c1_act, c1_out);
    // c2 inside the update: ctrl [N,3H] is not kept (the backward makes it again).
    ops.dynamics_forward(h_out, v_out, h, v, c1_act, m_.c2_weight->work, m_.c2_bias->work, m_.mu->work, p_);
}

void DynamicsLayer::backward(Ops& ops, Tensor h, Tensor v, Tensor dh_out, Tensor dv_out, Tensor dh, Tensor dv,
                             Write grads) {
    ops.zero(dc1_out_);
    // c2's bias gradient from the update's pass (dctrl's column sums as it makes them).
    ops.dynamics_backward(dh, dv, dctrl_, m_.mu->grad, m_.c2_bias->grad, dh_out, dv_out, h, v, c1_act_,
                          m_.c2_weight->work, m_.c2_bias->work, m_.mu->work, p_, Write::overwrite, grads);
    ops.matmul_backward(dc1_act_, m_.c2_weight->grad, {}, dctrl_, c1_act_, m_.c2_weight->work, Write::overwrite,
                        grads);
    ops.silu_backward(dc1_out_, dc1_act_, c1_out_);
    ops.concat_matmul_backward(dh, dv, m_.c1_weight->grad, m_.c1_bias->grad, dc1_out_, h, v, m_.c1_weight->work,
                               Write::add, grads);
}

}  // namespace moe
