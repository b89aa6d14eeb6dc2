// The experts of one MoE layer: SwiGLU MLPs, w_down (silu(w_gate x) * w_up x),
// run as grouped matmuls over expert-sorted rows. Parameters are stacked
// [E_local, ...]; files name them per expert (MODEL.md).
#pragma once
#include <vector>

#include "engine/params/arena.h"
#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe {

class Experts {
public:
    // The experts [first, first + count) of the layer live here.
    Experts(const ModelConfig& cfg, ParameterSet& params, int layer, int first, int count);
    // recompute: the inner activations (gate, up, SwiGLU) go to scratch and
    // the backward computes them again from the saved input.
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t max_rows, bool recompute);

    // ye[R,H] from xe[R,H]; offsets[count+1] split the rows by local expert.
    void forward(Ops& ops, Tensor xe, Tensor ye, const std::vector<int64_t>& offsets);
    // dxe = input gradient (overwritten); parameter gradients are written as
    // grads says.
    void backward(Ops& ops, Tensor xe, Tensor dye, Tensor dxe, const std::vector<int64_t>& offsets, Write grads);

private:
    // The inner activations of xe: gate, up, SwiGLU.
    void inner(Ops& ops, Tensor xe, const std::vector<int64_t>& offsets);

    Param *w_gate_, *w_up_, *w_down_;
    bool recompute_ = false;
    Tensor gate_, up_, act_;         // [max_rows, I]: saved, or scratch when recomputed
    Tensor dgate_, dup_, dact_;      // scratch
};

}  // namespace moe
