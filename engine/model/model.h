// The MoE transformer with INL dynamics (MODEL.md "Forward"), its hand-written
// backward, and every buffer it needs, planned once for a micro-batch of
// B sequences of T tokens.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "engine/params/arena.h"
#include "engine/config/config.h"
#include "engine/model/model_layers.h"
#include "engine/params/parameters.h"
#include "engine/run/phase_times.h"

namespace moe {

// Called by the backward with each bucket of parameters as soon as their
// gradients are final, so that their all-reduce can overlap the rest.
using BucketReady = std::function<void(const std::vector<Param*>& bucket)>;

struct ForwardResult {
    double loss = 0;              // mean cross-entropy
    double aux = 0;               // sum over layers of load-balancing + z losses
    std::vector<MoeStats> layers;  // [L] each layer's routing and router losses

    int64_t dropped() const;  // slots dropped by capacity, all layers
};

// How a model is set up on this rank, beyond its config and micro-batch.
struct ModelOptions {
    // allocate: memory for everything is allocated at construction (after
    // sizing it against what the backend has); plan_only: the parameters and
    // buffers are declared and sized, nothing is allocated (names, shapes,
    // bytes; no forward or backward).
    enum class Memory { allocate, plan_only };

    GroupPlace ep;             // the expert-parallel group (or a planned one): this rank holds its share of the experts
    OptimizerShards shards{};  // ZeRO-1: the groups the optimizer state is split over (default: none)
    Recompute recompute = Recompute::none;
    Memory memory = Memory::allocate;
};

class Model {
public:
    using Memory = ModelOptions::Memory;

    // precision: the backend's training_precision(), or a uniform F32/F64 on
    // the CPU. A run too large for the backend's memory is refused before
    // anything is allocated (ConfigError with the plan's bytes).
    Model(const ModelConfig& cfg, Ops& ops, const Precision& precision, int B, int T,
          const ModelOptions& options = {});
    ~Model();

    ParameterSet& params() { return params_; }
    const ParameterSet& params() const { return params_; }
    const ModelConfig& config() const { return cfg_; }
    int batch() const { return B_; }
    int seq_len() const { return T_; }
    size_t activation_bytes() const { return acts_.bytes() + block_.bytes() + scratch_.bytes(); }
    // Kept from the forward for the backward (with full recomputation: each
    // block's input, and one block's activations recomputed in turn).
    size_t saved_activation_bytes() const { return acts_.bytes() + block_.bytes(); }
    size_t scratch_bytes() const { return scratch_.bytes(); }  // reused layer by layer
    const ParameterBytes& parameter_bytes() const { return parameter_bytes_; }
    // Everything this rank allocates: parameters (with gradients and moments),
    // activations and scratch.
    size_t planned_bytes() const { return planned_bytes_; }
    // The gradient buckets in the order the backward hands them over: the
    // head's (final norm, untied lm_head), then each layer's, last layer
    // first. Parameters in none (the embedding, shared dynamics) are final
    // only when the backward returns.
    const std::vector<std::vector<Param*>>& gradient_buckets() const { return buckets_; }

    // inputs, targets: host arrays [B*T], ids already checked against V.
    // The loss of the batch, the logits kept for logits(). With a
    // loss_scale, the training forward: the head's gradient of
    // loss_scale * loss is made in the same pass over the logits as the loss
    // (written over them, so logits() holds it), and backward() follows.
    ForwardResult forward(const int32_t* inputs, const int32_t* targets,
                          std::optional<double> loss_scale = std::nullopt);
    // The gradient of loss_scale * (loss + aux) of the last training forward
    // (its loss_scale), written into the parameter gradients as grads says:
    // Write::overwrite for a step's first micro-batch (no zeroing first),
    // Write::add for the rest. bucket_ready, when given, receives each bucket
    // as soon as its gradients are final (give it on a step's last
    // micro-batch). Once per training forward; std::logic_error otherwise.
    void backward(Write grads, const BucketReady& bucket_ready = nullptr);
    // The balancing loss of the last forward over these slots per expert
    // [L][E] instead of the micro-batch's (model.moe.balance_scope
    // global_batch); r, that forward's result, gets the losses again. The
    // backward's gradients follow them.
    void balance_over(const std::vector<std::vector<int64_t>>& slots, ForwardResult& r);
    // After an optimizer step: the routers' states (expert biases) follow the
    // step's loads, routed[L][E] summed over its micro-batches and all ranks.
    void after_step(const std::vector<std::vector<int64_t>>& routed);
    // The [B*T, V] logits of the last forward (a training forward's:
    // their gradient).
    const Tensor& logits() const { return logits_; }
    // Adds each phase's time of later forwards and backwards to times (null:
    // stop). Timing waits for the device at every phase boundary.
    void set_phase_times(PhaseTimes* times);

private:
    void declare(const GroupPlace& ep);
    void carve();
    // Block l's forward from h_[l], v_[l]; its routing statistics (null: not wanted).
    void forward_block(size_t l, MoeStats* stats);
    // r's router losses (and aux) from the statistics the forward read back.
    void router_losses(ForwardResult& r) const;
    std::string too_large_message(size_t available) const;

    const ModelConfig cfg_;
    Ops& ops_;
    Precision pr_;
    int B_, T_;
    ModelOptions options_;
    ParameterBytes parameter_bytes_;
    size_t planned_bytes_ = 0;
    ParameterSet params_;
    std::unique_ptr<ModelLayers> layers_;
    Param *embed_, *norm_, *lm_head_;  // lm_head_ == embed_ when tied
    std::vector<BlockActivations> blocks_;  // each block's activations
    std::vector<int32_t> ids_host_;
    std::vector<std::vector<Param*>> buckets_;  // [0]: the head's, [L - l]: layer l's
    PhaseTimes* times_ = nullptr;

    // acts_: kept from the forward; block_: one block's activations, shared by
    // the blocks when they are recomputed (Recompute::full); scratch_: reused.
    Arena acts_, block_, scratch_;
    Tensor ids_, targets_;
    std::vector<Tensor> h_, v_;  // residual and velocity streams entering each layer, [L+1]
    Tensor hn_, rstd_, logits_, losses_;
    std::optional<double> loss_scale_;  // the last forward's, until its backward
    Tensor router_stats_;  // F64 [L, E+1] (learned router): each layer's Router stats
    std::vector<double> router_stats_host_;
    std::vector<std::vector<int64_t>> balance_slots_;  // set by balance_over until the next forward
    Tensor dh_[2], dv_[2], dxn_;
};

}  // namespace moe
