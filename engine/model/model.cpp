#include "engine/model/model.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>

#include "engine/run/trace_range.h"
#include "kernels/attention_dims.h"

namespace moe {

Model::Model(const ModelConfig& cfg, Ops& ops, const Precision& precision, int B, int T,
             const ModelOptions& options)
    : cfg_(cfg), ops_(ops), pr_(precision), B_(B), T_(T), options_(options), acts_(ops), block_(ops), scratch_(ops) {
    const int hd = cfg.head_dim();
    if (ops.device() == Device::CUDA && !gpu_attention_head_size(hd))
        throw ConfigError("config: the head size model.hidden_size / model.num_heads is " + std::to_string(hd) +
                          "; the CUDA attention kernels take 16, 32, 64 or 128: change model.num_heads");
    try {
        declare(options.ep);
        carve();  // a dry run sizes the arenas
        parameter_bytes_ = params_.planned_bytes(precision, options.shards);
        size_t buffers = 0;
        if (__builtin_add_overflow(acts_.bytes(), block_.bytes(), &buffers) ||
            __builtin_add_overflow(buffers, scratch_.bytes(), &buffers) ||
            __builtin_add_overflow(parameter_bytes_.total(), buffers, &planned_bytes_))
            throw std::length_error("plan too large");
    } catch (const std::length_error&) {
        throw ConfigError("config: this model's buffers would take more than 2^64 bytes: lower model.hidden_size, "
                          "model.vocab_size, model.num_layers or the experts' sizes");
    }
    if (options.memory == Memory::plan_only) return;
    // Sized against what this rank has before anything is allocated: a run
    // too large is refused at once, not after minutes of allocating.
    const size_t available = ops.memory_available();
    if (planned_bytes_ > available) throw ConfigError(too_large_message(available));
    try {
        params_.allocate(ops, precision, options.shards);
        acts_.allocate();
        if (block_.bytes() > 0) block_.allocate();
        scratch_.allocate();
    } catch (const OutOfDeviceMemory& e) {
        throw ConfigError(too_large_message(e.free_bytes));
    }
    carve();
    ids_host_.resize(size_t(B) * T);
}

// The parameters of every layer, in the order the arenas hold them, and the
// gradient buckets the backward hands over.
void Model::declare(const GroupPlace& ep) {
    layers_ = std::make_unique<ModelLayers>(cfg_, params_, ep);
    embed_ = layers_->embed;
    norm_ = layers_->norm;
    lm_head_ = layers_->lm_head;
    blocks_.resize(layers_->blocks.size());
    buckets_.resize(size_t(cfg_.num_layers) + 1);
    buckets_[0].push_back(norm_);
    if (!cfg_.tie_embeddings) buckets_[0].push_back(lm_head_);
    for (Param& p : params_.all()) {
        if (p.name.rfind("layers.", 0) == 0)
            buckets_[size_t(cfg_.num_layers - std::stoi(p.name.substr(7)))].push_back(&p);
    }
}

Model::~Model() = default;

std::string Model::too_large_message(size_t available) const {
    const double gib = 1024.0 * 1024.0 * 1024.0;
    const ParameterBytes& p = parameter_bytes_;
    char buf[1536];
    std::snprintf(buf, sizeof buf,
                  "config: this run needs %.2f GiB on this rank (weights %.2f, working copy %.2f, gradients %.2f, "
                  "AdamW moments %.2f for %.1fM parameters; activations kept %.2f and scratch %.2f for "
                  "train.micro_batch_size %d x train.seq_len %d) but %s has %.2f GiB available: lower "
                  "train.micro_batch_size (raise train.grad_accum_steps to keep the batch) or the model's sizes, "
                  "split the optimizer state (parallel.shard_optimizer), recompute activations (train.recompute), or "
                  "spread the experts over more ranks (parallel.expert_parallel); moe-train --plan shows the plan",
                  planned_bytes_ / gib, p.masters / gib, p.working_copy / gib, p.gradients / gib, p.moments / gib,
                  params_.numel() / 1e6, saved_activation_bytes() / gib, scratch_bytes() / gib, B_, T_,
                  ops_.device() == Device::CUDA ? ops_.device_name().c_str() : "this machine", available / gib);
    return buf;
}

void Model::carve() {
    const int64_t N = int64_t(B_) * T_, H = cfg_.hidden_size, V = cfg_.vocab_size, L = cfg_.num_layers;
    const bool dyn = cfg_.dynamics.enabled;
    ids_ = acts_.take(DType::I32, {N});
    targets_ = acts_.take(DType::I32, {N});
    if (cfg_.moe.router == RouterKind::learned) router_stats_ = acts_.take(DType::F64, {L, cfg_.moe.num_experts + 1});
    h_.assign(L + 1, Tensor{});
    v_.assign(L + 1, Tensor{});
    for (int64_t l = 0; l <= L; ++l) {
        h_[l] = acts_.take(pr_.act, {N, H});
        if (dyn) v_[l] = acts_.take(pr_.act, {N, H});
    }
    // A block's activations are kept per block, or, recomputed in the
    // backward, carved once for all of them.
    const bool full = options_.recompute == Recompute::full;
    Arena& saved = full ? block_ : acts_;
    for (int64_t l = 0; l < L; ++l) {
        BlockLayers& b = *layers_->blocks[size_t(l)];
        scratch_.rewind();  // every block reuses the same scratch
        if (full) block_.rewind();
        blocks_[size_t(l)] = BlockActivations::take(saved, pr_, N, H, dyn);
        b.attn.carve(saved, scratch_, pr_, B_, T_);
        b.moe.carve(saved, scratch_, pr_, N, router_stats_.empty() ? Tensor{} : router_stats_.rows(l, l + 1),
                    options_.recompute == Recompute::experts);
        if (dyn) b.dynamics->carve(saved, scratch_, pr_, N);
    }
    hn_ = acts_.take(pr_.act, {N, H});
    rstd_ = acts_.take(pr_.stat, {N});
    logits_ = acts_.take(pr_.act, {N, V});
    losses_ = acts_.take(pr_.stat, {N});
    // Gradient streams live outside the per-block scratch.
    for (int i = 0; i < 2; ++i) {
        dh_[i] = acts_.take(pr_.act, {N, H});
        if (dyn) dv_[i] = acts_.take(pr_.act, {N, H});
    }
    dxn_ = acts_.take(pr_.act, {N, H});
}

void Model::set_phase_times(PhaseTimes* times) {
    times_ = times;
    for (auto& b : layers_->blocks) b->moe.set_phase_times(times);
}

ForwardResult Model::forward(const int32_t* inputs, const int32_t* targets, std::optional<double> loss_scale) {
    const TraceRange range("forward");
    const int64_t N = int64_t(B_) * T_;
    ForwardResult r;
    loss_scale_.reset();  // until this forward is whole
    {
        PhaseScope scope(times_, ops_, Phase::Other);
        ids_host_.assign(inputs, inputs + N);
        ops_.copy_from_host(ids_, inputs);
        ops_.copy_from_host(targets_, targets);
        ops_.embedding_forward(h_[0], ids_, embed_->work);
        if (cfg_.dynamics.enabled) ops_.zero(v_[0]);
    }

    r.layers.resize(layers_->blocks.size());
    balance_slots_.clear();
    for (size_t l = 0; l < layers_->blocks.size(); ++l) {
        const TraceRange layer(indexed("layer", int64_t(l)));
        forward_block(l, &r.layers[l]);
    }
    if (!router_stats_.empty()) {
        // Every layer's router statistics in one read: a device waits once.
        PhaseScope scope(times_, ops_, Phase::Routing);
        router_stats_host_.resize(size_t(router_stats_.numel()));
        ops_.copy_to_host(router_stats_host_.data(), router_stats_);
        router_losses(r);
    }

    PhaseScope scope(times_, ops_, Phase::Head);
    ops_.rmsnorm_forward(hn_, rstd_, h_.back(), norm_->work, cfg_.norm_eps);
    ops_.matmul_forward(logits_, hn_, lm_head_->work, {});
    // Training: the loss's gradient over the logits in the same pass.
    ops_.cross_entropy(losses_, loss_scale ? logits_ : Tensor{}, logits_, targets_,
                       loss_scale.value_or(0) / double(N));
    r.loss = ops_.sum(losses_) / double(N);
    loss_scale_ = loss_scale;
    return r;
}

void Model::router_losses(ForwardResult& r) const {
    const int64_t row = router_stats_.dim(1);
    r.aux = 0;
    for (size_t l = 0; l < blocks_.size(); ++l) {
        const RouterLosses losses = layers_->blocks[l]->moe.router_losses(router_stats_host_.data() + l * row);
        r.layers[l].losses = losses;
        r.aux += losses.aux + losses.z_loss;
    }
}

void Model::balance_over(const std::vector<std::vector<int64_t>>& slots, ForwardResult& r) {
    if (router_stats_.empty()) return;  // no balancing loss
    balance_slots_ = slots;
    for (size_t l = 0; l < blocks_.size(); ++l) layers_->blocks[l]->moe.balance_over(slots.at(l));
    router_losses(r);
}

int64_t ForwardResult::dropped() const {
    int64_t n = 0;
    for (const MoeStats& s : layers) n += s.dropped;
    return n;
}

void Model::forward_block(size_t l, MoeStats* stats) {
    BlockLayers& b = *layers_->blocks[l];
    const Attend causal = [&](Tensor xn, Tensor residual, Tensor out) { b.attn.forward(ops_, xn, residual, out); };
    MoeStats s = b.forward(ops_, blocks_[l], h_[l], v_[l], h_[l + 1], v_[l + 1], ids_host_.data(), causal, times_);
    if (stats) *stats = std::move(s);
}

void Model::backward(Write grads, const BucketReady& bucket_ready) {
    if (!loss_scale_)
        throw std::logic_error("Model::backward: no training forward to follow (call forward with a loss_scale "
                               "first, once per backward)");
    const TraceRange range("backward");
    const double loss_scale = *loss_scale_;
    loss_scale_.reset();
    const bool dyn = cfg_.dynamics.enabled;
    Tensor dh = dh_[0], dv = dv_[0];

    {
        // Head: from dlogits (the forward's, in place of the logits) through the final norm.
        PhaseScope scope(times_, ops_, Phase::Head);
        ops_.matmul_backward(dxn_, lm_head_->grad, {}, logits_, hn_, lm_head_->work, Write::overwrite, grads);
        ops_.rmsnorm_backward(dh, norm_->grad, dxn_, h_.back(), norm_->work, rstd_, Write::overwrite, grads);
        if (dyn) ops_.zero(dv);
        if (bucket_ready) bucket_ready(buckets_[0]);
    }

    for (size_t l = blocks_.size(); l-- > 0;) {
        const TraceRange layer(indexed("layer", int64_t(l)));
        BlockLayers& b = *layers_->blocks[l];
        const BlockActivations& a = blocks_[l];
        // The block's activations again, from its saved input: the same
        // kernels on the same values write the same bits (h_[l + 1] and
        // v_[l + 1] included, no longer read).
        if (options_.recompute == Recompute::full) {
            const TraceRange recompute("recompute");
            forward_block(l, nullptr);  // sets the router's load again: the balance given, if any, stays
            if (!balance_slots_.empty()) b.moe.balance_over(balance_slots_[l]);
        }
        if (dyn) {
            PhaseScope scope(times_, ops_, Phase::Dynamics);
            Tensor dh_in = dh.data == dh_[0].data ? dh_[1] : dh_[0];
            Tensor dv_in = dv.data == dv_[0].data ? dv_[1] : dv_[0];
            // Shared dynamics get their first contribution from the last layer.
            const bool first = !cfg_.dynamics.shared || l + 1 == blocks_.size();
            b.dynamics->backward(ops_, a.h_mid, v_[l], dh, dv, dh_in, dv_in, first ? grads : Write::add);
            dh = dh_in;
            dv = dv_in;
        }
        // h_mid = x + moe(norm(x)): dh flows to x unchanged, plus the MoE path.
        b.moe.backward(ops_, a.xn2, dh, dxn_, loss_scale, grads);
        {
            PhaseScope scope(times_, ops_, Phase::Other);
            ops_.rmsnorm_backward(dh, b.moe_norm->grad, dxn_, a.x, b.moe_norm->work, a.rstd2, Write::add, grads);
        }
        // x = h + attn(norm(h)).
        PhaseScope scope(times_, ops_, Phase::Attention);
        b.attn.backward(ops_, a.xn1, dh, dxn_, grads);
        ops_.rmsnorm_backward(dh, b.attn_norm->grad, dxn_, h_[l], b.attn_norm->work, a.rstd1, Write::add, grads);
        if (bucket_ready) bucket_ready(buckets_[blocks_.size() - l]);
    }
    PhaseScope scope(times_, ops_, Phase::Other);
    // A tied table already holds the head's gradient.
    ops_.embedding_backward(embed_->grad, ids_, dh, embed_ == lm_head_ ? Write::add : grads);
}

void Model::after_step(const std::vector<std::vector<int64_t>>& routed) {
    for (size_t l = 0; l < layers_->blocks.size(); ++l) layers_->blocks[l]->moe.after_step(ops_, routed.at(l));
}

}  // namespace moe
