// INL dynamics (MODEL.md): a controller reads (h, v) and sets per-feature
// alpha, beta and gate; the velocity v is pulled toward mu and h moves by
// dt * gate * v. One module's parameters may serve every layer (shared) or one
// layer; each application keeps its own saved activations.
#pragma once
#include <string>

#include "engine/params/arena.h"
#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe {

struct DynamicsModule {
    // prefix: "dynamics." (shared) or "layers.{l}.dynamics."
    DynamicsModule(const ModelConfig& cfg, ParameterSet& params, const std::string& prefix);
    Param *mu, *c1_weight, *c1_bias, *c2_weight, *c2_bias;
};

class DynamicsLayer {
public:
    DynamicsLayer(const ModelConfig& cfg, DynamicsModule& module);
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N);

    // (h_out, v_out) = dynamics(h, v), all [N,H], N at most the rows carved.
    void forward(Ops& ops, Tensor h, Tensor v, Tensor h_out, Tensor v_out);
    // dh, dv = input gradients (overwritten); parameter gradients are
    // written as grads says.
    void backward(Ops& ops, Tensor h, Tensor v, Tensor dh_out, Tensor dv_out, Tensor dh, Tensor dv, Write grads);

private:
    DynamicsModule& m_;
    DynamicsParams p_;
    int64_t H_, C_;
    Tensor c1_out_, c1_act_;                    // saved
    Tensor dc1_out_, dc1_act_, dctrl_;          // scratch
};

}  // namespace moe
