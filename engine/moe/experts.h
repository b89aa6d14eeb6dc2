// The experts of one MoE layer: SwiGLU MLPs, w_down (silu(w_gate x) * w_up x),
// run as grouped matmuls over expert-sorted rows. Routed experts' parameters
// are stacked [E_local, ...]; files name them per expert (MODEL.md). Gate and
// up are one parameter, w_gate_up [E_local, 2I, H] (each expert's gate rows,
// then its up rows; files see w_gate and w_up), so one GEMM computes both and
// one computes the input gradient from both. The
// layer's shared experts are one more Experts: a single group, their SwiGLUs
// fused into one of inner size n * I_s, every row of the input through it
// (docs/MODEL-OPTIONS.md "Shared experts").
#pragma once
#include <vector>

#include "engine/params/arena.h"
#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe {

class Experts {
public:
    // The routed experts [first, first + count) of the layer live here.
    Experts(const ModelConfig& cfg, ParameterSet& params, int layer, int first, int count);
    // The layer's cfg.moe.shared_experts shared experts, fused: parameters
    // layers.{layer}.moe.shared_experts.w_gate_up [2*n*I_s, H] (files: .w_gate
    // and .w_up [n*I_s, H]) and .w_down [H, n*I_s], replicated on every rank.
    // Their forward and backward
    // take offsets {0, rows}: one group of every row.
    static Experts shared(const ModelConfig& cfg, ParameterSet& params, int layer);

    // recompute: the inner activations ([gate | up], SwiGLU) go to scratch and
    // the backward computes them again from the saved input.
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t max_rows, bool recompute);

    // ye[R,H] from xe[R,H]; offsets[count+1] split the rows by local expert.
    void forward(Ops& ops, Tensor xe, Tensor ye, const std::vector<int64_t>& offsets);
    // dxe = input gradient, written as dx_write says; parameter gradients are
    // written as grads says.
    void backward(Ops& ops, Tensor xe, Tensor dye, Tensor dxe, const std::vector<int64_t>& offsets, Write dx_write,
                  Write grads);

private:
    Experts(Param* w_gate_up, Param* w_down, int64_t groups, int64_t inner);
    // The inner activations of xe: [gate | up], SwiGLU.
    void inner(Ops& ops, Tensor xe, const std::vector<int64_t>& offsets);
    // A parameter's tensor (work or grad) as the grouped matmuls take it,
    // [groups, O, I] (empty stays empty).
    Tensor grouped(Tensor t) const;

    Param *w_gate_up_, *w_down_;
    int64_t groups_, inner_;  // experts stacked (1 for the fused shared ones), inner size of each
    bool recompute_ = false;
    Tensor gate_up_, act_;    // [max_rows, 2I], [max_rows, I]: saved, or scratch when recomputed
    Tensor dgate_up_, dact_;  // scratch
};

}  // namespace moe
