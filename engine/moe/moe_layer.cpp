#include "engine/moe/moe_layer.h"

#include "engine/run/trace_range.h"

namespace moe {

MoeLayer::MoeLayer(const ModelConfig& cfg, ParameterSet& params, int layer, const GroupPlace& ep)
    : H_(cfg.hidden_size),
      k_(cfg.moe.top_k),
      router_(make_router(cfg, params, layer)),
      dispatcher_(cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.capacity_factor, ep),
      experts_(cfg, params, layer, ep.rank * (cfg.moe.num_experts / ep.size), cfg.moe.num_experts / ep.size) {
    if (cfg.moe.shared_experts > 0) shared_ = Experts::shared(cfg, params, layer);
}

void MoeLayer::carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor router_stats,
                     bool recompute_experts) {
    router_->carve(acts, scratch, pr, N, router_stats);
    dispatcher_.carve(acts, scratch, pr, N, H_);
    experts_.carve(acts, scratch, pr, dispatcher_.max_local_rows(N), recompute_experts);
    if (shared_) shared_->carve(acts, scratch, pr, N, recompute_experts);
    dweights_ = scratch.take(pr.stat, {N, k_});
}

MoeStats MoeLayer::forward(Ops& ops, Tensor x, const int32_t* ids, Tensor residual, Tensor y) {
    {
        PhaseScope scope(times_, ops, Phase::Routing);
        RouterChoice choice;
        {
            const TraceRange range("router");
            choice = router_->forward(ops, x, ids);
        }
        {
            const TraceRange range("dispatch");
            expert_in_ = dispatcher_.dispatch(ops, choice, x);
        }
        router_->set_load(dispatcher_.counts());
    }
    {
        PhaseScope scope(times_, ops, Phase::Experts);
        experts_.forward(ops, expert_in_, dispatcher_.expert_output(), dispatcher_.local_offsets());
        if (shared_) {  // y = the shared experts' output, to which combine adds the routed one
            all_rows_ = {0, x.dim(0)};
            shared_->forward(ops, x, y, all_rows_);
        }
    }
    PhaseScope scope(times_, ops, Phase::Routing);
    const TraceRange range("combine");
    dispatcher_.combine(ops, y, shared_ ? Write::add : Write::overwrite, residual);

    const RoutingCounts& counts = dispatcher_.counts();
    MoeStats stats;
    stats.routed.resize(counts.num_experts);
    for (int e = 0; e < counts.num_experts; ++e) stats.routed[e] = counts.routed(e);
    stats.dropped = counts.total_dropped();
    return stats;
}

void MoeLayer::backward(Ops& ops, Tensor x, Tensor dy, Tensor dx, double loss_scale, Write grads) {
    const bool trainable = router_->weights_have_gradient();
    Tensor d_out, d_in;
    {
        PhaseScope scope(times_, ops, Phase::Routing);
        const TraceRange range("combine");
        if (trainable) ops.zero(dweights_);
        d_out = dispatcher_.combine_backward(ops, dy, trainable ? dweights_ : Tensor{});
        d_in = dispatcher_.expert_input_grad();
    }
    {
        PhaseScope scope(times_, ops, Phase::Experts);
        experts_.backward(ops, expert_in_, d_out, d_in, dispatcher_.local_offsets(), Write::overwrite, grads);
    }
    {
        PhaseScope scope(times_, ops, Phase::Routing);
        const TraceRange range("dispatch");
        dispatcher_.dispatch_backward(ops, d_in, dx);
    }
    if (shared_) {  // y's gradient reaches the shared experts unweighted; dx += theirs
        PhaseScope scope(times_, ops, Phase::Experts);
        shared_->backward(ops, x, dy, dx, all_rows_, Write::add, grads);
    }
    PhaseScope scope(times_, ops, Phase::Routing);
    const TraceRange range("router");
    router_->backward(ops, x, dweights_, dx, loss_scale, grads);
}

}  // namespace moe
