#include "engine/model/decoder.h"

#include <cstdio>
#include <stdexcept>
#include <string>

#include "kernels/attention_dims.h"

namespace moe {

namespace {

ModelConfig dropless(ModelConfig cfg) {
    cfg.moe.capacity_factor.reset();
    return cfg;
}

}  // namespace

Decoder::Decoder(const ModelConfig& cfg, Ops& ops, int positions, int rows)
    : cfg_(dropless(cfg)),
      ops_(ops),
      pr_(ops.training_precision()),
      positions_(positions),
      rows_(rows),
      state_(ops),
      work_(ops) {
    if (positions < 1 || rows < 1 || rows > positions)
        throw std::invalid_argument("decoder: needs 1 <= rows (" + std::to_string(rows) + ") <= positions (" +
                                    std::to_string(positions) + ")");
    if (ops.device() == Device::CUDA && cfg.head_dim() > kMaxDecodeHeadDim)
        throw ConfigError("config: the head size model.hidden_size / model.num_heads is " +
                          std::to_string(cfg.head_dim()) + "; generation on the GPU takes at most " +
                          std::to_string(kMaxDecodeHeadDim));
    layers_ = std::make_unique<ModelLayers>(cfg_, params_, GroupPlace{});  // every expert in this process
    carve();  // a dry run sizes the arenas
    planned_bytes_ = params_.planned_bytes(pr_, {}, ParameterSet::Use::inference).total() + state_.bytes() +
                     work_.bytes();
    const size_t available = ops.memory_available();
    if (planned_bytes_ > available) {
        const double gib = 1024.0 * 1024.0 * 1024.0;
        char buf[512];
        std::snprintf(buf, sizeof buf,
                      "generation needs %.2f GiB (weights for inference %.2f, KV cache and buffers %.2f for %d "
                      "positions) but %s has %.2f GiB available",
                      planned_bytes_ / gib, (planned_bytes_ - state_.bytes() - work_.bytes()) / gib,
                      (state_.bytes() + work_.bytes()) / gib, positions, ops.device_name().c_str(), available / gib);
        throw ConfigError(buf);
    }
    params_.allocate(ops, pr_, {}, ParameterSet::Use::inference);
    state_.allocate();
    work_.allocate();
    carve();
}

Decoder::~Decoder() = default;

void Decoder::carve() {
    const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size, R = rows_;
    const int64_t nkv = cfg_.num_kv_heads, hd = cfg_.head_dim();
    const bool dyn = cfg_.dynamics.enabled;
    k_cache_.clear();
    v_cache_.clear();
    for (size_t l = 0; l < layers_->blocks.size(); ++l) {
        k_cache_.push_back(state_.take(pr_.act, {positions_, nkv, hd}));
        v_cache_.push_back(state_.take(pr_.act, {positions_, nkv, hd}));
    }
    for (int i = 0; i < 2; ++i) {
        h_[i] = state_.take(pr_.act, {R, H});
        if (dyn) v_[i] = state_.take(pr_.act, {R, H});
    }
    block_ = BlockActivations::take(state_, pr_, R, H, dyn);
    ids_ = state_.take(DType::I32, {R});
    hn_ = state_.take(pr_.act, {R, H});
    rstd_ = state_.take(pr_.stat, {R});
    logits_ = state_.take(pr_.stat, {R, V});  // fp32 for sampling, whatever the compute dtype
    if (cfg_.moe.router == RouterKind::learned) router_stats_ = state_.take(DType::F64, {cfg_.moe.num_experts + 1});
    // Each layer's buffers in the same memory: the layers run one after another.
    for (auto& b : layers_->blocks) {
        work_.rewind();
        b->attn.carve_decode(work_, pr_, R);
        b->moe.carve(work_, work_, pr_, R, router_stats_, false);
        if (dyn) b->dynamics->carve(work_, work_, pr_, R);
    }
}

void Decoder::append(const int32_t* ids, int n) {
    if (n < 1 || n > rows_ || length_ + n > positions_)
        throw std::invalid_argument("decoder: cannot append " + std::to_string(n) + " positions to " +
                                    std::to_string(length_) + " of " + std::to_string(positions_) + " (at most " +
                                    std::to_string(rows_) + " at a time)");
    for (int i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
            throw std::invalid_argument("decoder: token id " + std::to_string(ids[i]) + " is outside [0, " +
                                        std::to_string(cfg_.vocab_size) + ")");
    ids_host_.assign(ids, ids + n);
    const Tensor ids_n = ids_.rows(0, n);
    ops_.copy_from_host(ids_n, ids);
    const bool dyn = cfg_.dynamics.enabled;
    ops_.embedding_forward(h_[0].rows(0, n), ids_n, layers_->embed->work);
    if (dyn) ops_.zero(v_[0].rows(0, n));
    const BlockActivations acts = block_.first_rows(n);
    int in = 0;
    for (size_t l = 0; l < layers_->blocks.size(); ++l, in ^= 1) {
        BlockLayers& b = *layers_->blocks[l];
        const Attend cached = [&](Tensor xn, Tensor residual, Tensor out) {
            b.attn.decode(ops_, xn, residual, out, k_cache_[l], v_cache_[l], length_);
        };
        const Tensor v_in = dyn ? v_[in].rows(0, n) : Tensor{}, v_out = dyn ? v_[in ^ 1].rows(0, n) : Tensor{};
        b.forward(ops_, acts, h_[in].rows(0, n), v_in, h_[in ^ 1].rows(0, n), v_out, ids_host_.data(), cached,
                  nullptr);
    }
    const Tensor hn = hn_.rows(0, n);
    ops_.rmsnorm_forward(hn, rstd_.rows(0, n), h_[in].rows(0, n), layers_->norm->work, cfg_.norm_eps);
    ops_.matmul_forward(logits_.rows(0, n), hn, layers_->lm_head->work, {});
    length_ += n;
    appended_ = n;
}

}  // namespace moe
