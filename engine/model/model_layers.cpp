#include "engine/model/model_layers.h"

#include <string>

namespace moe {

BlockActivations BlockActivations::take(Arena& arena, const Precision& pr, int64_t rows, int64_t H, bool dynamics) {
    BlockActivations a;
    a.xn1 = arena.take(pr.act, {rows, H});
    a.rstd1 = arena.take(pr.stat, {rows});
    a.x = arena.take(pr.act, {rows, H});
    a.xn2 = arena.take(pr.act, {rows, H});
    a.rstd2 = arena.take(pr.stat, {rows});
    if (dynamics) a.h_mid = arena.take(pr.act, {rows, H});
    return a;
}

BlockActivations BlockActivations::first_rows(int64_t n) const {
    return {xn1.rows(0, n), rstd1.rows(0, n), x.rows(0, n),  xn2.rows(0, n),
            rstd2.rows(0, n), h_mid.empty() ? Tensor{} : h_mid.rows(0, n)};
}

BlockLayers::BlockLayers(const ModelConfig& cfg, ParameterSet& params, int layer, DynamicsModule* dyn,
                         const GroupPlace& ep)
    : norm_eps(cfg.norm_eps),
      attn_norm(&params.add("layers." + std::to_string(layer) + ".attn_norm.weight", {cfg.hidden_size},
                            InitSpec::fill(1), false)),
      moe_norm(&params.add("layers." + std::to_string(layer) + ".moe_norm.weight", {cfg.hidden_size},
                           InitSpec::fill(1), false)),
      attn(cfg, params, layer),
      moe(cfg, params, layer, ep) {
    if (dyn) dynamics = std::make_unique<DynamicsLayer>(cfg, *dyn);
}

MoeStats BlockLayers::forward(Ops& ops, const BlockActivations& a, Tensor h, Tensor v, Tensor h_out, Tensor v_out,
                              const int32_t* ids, const Attend& attend, PhaseTimes* times) {
    {
        PhaseScope scope(times, ops, Phase::Attention);
        ops.rmsnorm_forward(a.xn1, a.rstd1, h, attn_norm->work, norm_eps);
        attend(a.xn1, h, a.x);  // the residual add rides the output projection
    }
    {
        PhaseScope scope(times, ops, Phase::Other);
        ops.rmsnorm_forward(a.xn2, a.rstd2, a.x, moe_norm->work, norm_eps);
    }
    // The residual add rides the MoE's combine.
    MoeStats stats = moe.forward(ops, a.xn2, ids, a.x, dynamics ? a.h_mid : h_out);
    if (dynamics) {
        PhaseScope scope(times, ops, Phase::Dynamics);
        dynamics->forward(ops, a.h_mid, v, h_out, v_out);
    }
    return stats;
}

// In the order the arenas hold them: the embedding, shared dynamics, each
// layer (its own dynamics first), the final norm and the head.
ModelLayers::ModelLayers(const ModelConfig& cfg, ParameterSet& params, const GroupPlace& ep) {
    const int64_t V = cfg.vocab_size, H = cfg.hidden_size;
    const InitSpec init = InitSpec::normal(cfg.init_std);
    embed = &params.add("embed.weight", {V, H}, init, true);
    if (cfg.dynamics.enabled && cfg.dynamics.shared)
        dynamics.push_back(std::make_unique<DynamicsModule>(cfg, params, "dynamics."));
    for (int l = 0; l < cfg.num_layers; ++l) {
        if (cfg.dynamics.enabled && !cfg.dynamics.shared)
            dynamics.push_back(
                std::make_unique<DynamicsModule>(cfg, params, "layers." + std::to_string(l) + ".dynamics."));
        DynamicsModule* dyn = cfg.dynamics.enabled ? dynamics.back().get() : nullptr;
        blocks.push_back(std::make_unique<BlockLayers>(cfg, params, l, dyn, ep));
    }
    norm = &params.add("norm.weight", {H}, InitSpec::fill(1), false);
    lm_head = cfg.tie_embeddings ? embed : &params.add("lm_head.weight", {V, H}, init, true);
}

}  // namespace moe
