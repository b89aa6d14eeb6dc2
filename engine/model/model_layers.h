// The model's layers and parameters (MODEL.md "Forward" and names), declared
// once for the two ways it runs: training (Model, a whole micro-batch with its
// backward) and generation (Decoder, new positions over a KV cache). Both run
// a block's forward through BlockLayers::forward, so its order is written once.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "comm/group_place.h"
#include "engine/config/config.h"
#include "engine/model/attention_layer.h"
#include "engine/model/dynamics_layer.h"
#include "engine/params/arena.h"
#include "engine/moe/moe_layer.h"
#include "engine/params/parameters.h"
#include "engine/run/phase_times.h"

namespace moe {

// One block's activations, as many rows as its input h: the normed inputs of
// attention (xn1, rstd1) and of the MoE layer (xn2, rstd2), x = h +
// attention, and h_mid = x + moe before the dynamics (attention's output
// projection adds h as it writes x, and the MoE layer adds x as it combines
// its experts' outputs: neither output is kept apart).
struct BlockActivations {
    Tensor xn1, rstd1, x, xn2, rstd2, h_mid;  // h_mid empty without dynamics

    // Carved from arena for `rows` rows of width H (h_mid when dynamics).
    static BlockActivations take(Arena& arena, const Precision& pr, int64_t rows, int64_t H, bool dynamics);
    // Their first n rows (a decoder's new positions).
    BlockActivations first_rows(int64_t n) const;
};

// How a block's attention runs on its normed input: out = residual +
// attention(xn).
using Attend = std::function<void(Tensor xn, Tensor residual, Tensor out)>;

struct BlockLayers {
    // dyn: the dynamics module the block applies after it (null: dynamics off).
    BlockLayers(const ModelConfig& cfg, ParameterSet& params, int layer, DynamicsModule* dyn, const GroupPlace& ep);

    // x = h + attend(norm(h)); h_out = x + moe(norm(x)), or with dynamics
    // (h_out, v_out) = dynamics(x + moe(norm(x)), v). ids (host) feed the
    // token_id router. Each group of ops is timed in its phase (times may be
    // null).
    MoeStats forward(Ops& ops, const BlockActivations& a, Tensor h, Tensor v, Tensor h_out, Tensor v_out,
                     const int32_t* ids, const Attend& attend, PhaseTimes* times);

    double norm_eps;
    Param *attn_norm, *moe_norm;
    AttentionLayer attn;
    MoeLayer moe;
    std::unique_ptr<DynamicsLayer> dynamics;
};

struct ModelLayers {
    // ep: the expert-parallel group whose share of the experts this rank holds.
    ModelLayers(const ModelConfig& cfg, ParameterSet& params, const GroupPlace& ep);

    Param *embed, *norm, *lm_head;  // lm_head == embed when tied
    std::vector<std::unique_ptr<DynamicsModule>> dynamics;  // one shared, one per layer, or none
    std::vector<std::unique_ptr<BlockLayers>> blocks;
};

}  // namespace moe
