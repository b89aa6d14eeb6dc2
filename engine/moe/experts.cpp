#include "engine/moe/experts.h"

#include <string>

namespace moe {

Experts::Experts(Param* w_gate_up, Param* w_down, int64_t groups, int64_t inner)
    : w_gate_up_(w_gate_up), w_down_(w_down), groups_(groups), inner_(inner) {}

Experts::Experts(const ModelConfig& cfg, ParameterSet& params, int layer, int first, int count)
    : groups_(count), inner_(cfg.moe.expert_hidden_size) {
    const std::string p = "layers." + std::to_string(layer) + ".moe.experts.{e}.";
    const int64_t H = cfg.hidden_size, I = inner_;
    const InitSpec init = InitSpec::normal(cfg.init_std);
    w_gate_up_ =
        &params.add(p + "w_gate_up", {count, 2 * I, H}, init, true, first, {{p + "w_gate", I}, {p + "w_up", I}});
    w_down_ = &params.add(p + "w_down", {count, H, I}, init, true, first);
}

Experts Experts::shared(const ModelConfig& cfg, ParameterSet& params, int layer) {
    const std::string p = "layers." + std::to_string(layer) + ".moe.shared_experts.";
    const int64_t H = cfg.hidden_size, I = cfg.moe.shared_inner();
    const InitSpec init = InitSpec::normal(cfg.init_std);  // like the routed experts
    Param& w_gate_up = params.add(p + "w_gate_up", {2 * I, H}, init, true, -1, {{p + "w_gate", I}, {p + "w_up", I}});
    Param& w_down = params.add(p + "w_down", {H, I}, init, true);
    return Experts(&w_gate_up, &w_down, 1, I);
}

Tensor Experts::grouped(Tensor t) const {
    if (t.empty() || t.ndim == 3) return t;
    return t.view({groups_, t.dim(0) / groups_, t.dim(1)});
}

void Experts::carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t max_rows, bool recompute) {
    const DType dt = pr.act;
    const int64_t I = inner_;
    recompute_ = recompute;
    Arena& inner = recompute ? scratch : acts;
    gate_up_ = inner.take(dt, {max_rows, 2 * I});
    act_ = inner.take(dt, {max_rows, I});
    dgate_up_ = scratch.take(dt, {max_rows, 2 * I});
    dact_ = scratch.take(dt, {max_rows, I});
}

void Experts::inner(Ops& ops, Tensor xe, const std::vector<int64_t>& offsets) {
    const int64_t R = xe.dim(0);
    const Tensor gate_up = gate_up_.rows(0, R);
    ops.grouped_matmul_forward(gate_up, xe, grouped(w_gate_up_->work), offsets);
    ops.swiglu_forward(act_.rows(0, R), gate_up);
}

void Experts::forward(Ops& ops, Tensor xe, Tensor ye, const std::vector<int64_t>& offsets) {
    inner(ops, xe, offsets);
    ops.grouped_matmul_forward(ye, act_.rows(0, xe.dim(0)), grouped(w_down_->work), offsets);
}

void Experts::backward(Ops& ops, Tensor xe, Tensor dye, Tensor dxe, const std::vector<int64_t>& offsets,
                       Write dx_write, Write grads) {
    const int64_t R = xe.dim(0);
    if (recompute_) inner(ops, xe, offsets);  // the same kernels on the same input: the same bits
    const Tensor gate_up = gate_up_.rows(0, R), act = act_.rows(0, R);
    const Tensor dgate_up = dgate_up_.rows(0, R), dact = dact_.rows(0, R);
    // The inner gradients are written, not added to: nothing to zero first.
    ops.grouped_matmul_backward(dact, grouped(w_down_->grad), dye, act, grouped(w_down_->work), offsets,
                                Write::overwrite, grads);
    ops.swiglu_backward(dgate_up, dact, gate_up);
    ops.grouped_matmul_backward(dxe, grouped(w_gate_up_->grad), dgate_up, xe, grouped(w_gate_up_->work), offsets,
                                dx_write, grads);
}

}  // namespace moe
