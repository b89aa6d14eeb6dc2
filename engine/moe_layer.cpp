#include "engine/moe_layer.h"

namespace moe {

MoeLayer::MoeLayer(const ModelConfig& cfg, ParameterSet& params, int layer)
    : H_(cfg.hidden_size),
      k_(cfg.moe.top_k),
      router_(cfg, params, layer),
      dispatcher_(cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.capacity_factor),
      experts_(cfg, params, layer, 0, cfg.moe.num_experts) {}

void MoeLayer::carve(Arena& acts, Arena& scratch, DType dt, int64_t N) {
    router_.carve(acts, scratch, dt, N);
    dispatcher_.carve(acts, N);
    experts_.carve(acts, scratch, dt, N * k_);
    xe_ = acts.take(dt, {N * k_, H_});
    ye_ = acts.take(dt, {N * k_, H_});
    dxe_ = scratch.take(dt, {N * k_, H_});
    dye_ = scratch.take(dt, {N * k_, H_});
    dtopk_w_ = scratch.take(dt, {N, k_});
}

MoeStats MoeLayer::forward(Ops& ops, Tensor x, const int32_t* ids, Tensor y) {
    router_.forward(ops, x, ids);
    xe_rows_ = dispatcher_.dispatch(ops, router_.expert_of_slot(), x, xe_);
    const RoutingPlan& plan = dispatcher_.plan();
    Tensor ye = ye_.rows(0, plan.rows());
    experts_.forward(ops, xe_rows_, ye, plan.offsets);
    dispatcher_.combine(ops, ye, router_.topk_w(), y);

    MoeStats stats;
    stats.losses = router_.losses(ops, plan);
    stats.routed.resize(plan.num_experts);
    for (int e = 0; e < plan.num_experts; ++e) stats.routed[e] = plan.routed(e);
    stats.dropped = plan.total_dropped();
    return stats;
}

void MoeLayer::backward(Ops& ops, Tensor x, Tensor dy, Tensor dx, double loss_scale) {
    const RoutingPlan& plan = dispatcher_.plan();
    const int64_t R = plan.rows();
    Tensor dxe = dxe_.rows(0, R), dye = dye_.rows(0, R);
    ops.zero(dye);
    ops.zero(dxe);
    const bool learned = router_.learned();
    if (learned) ops.zero(dtopk_w_);
    dispatcher_.combine_backward(ops, dy, ye_.rows(0, R), router_.topk_w(), dye, learned ? dtopk_w_ : Tensor{});
    experts_.backward(ops, xe_rows_, dye, dxe, plan.offsets);
    dispatcher_.dispatch_backward(ops, dxe, dx);
    router_.backward(ops, x, dtopk_w_, dx, loss_scale);
}

}  // namespace moe
