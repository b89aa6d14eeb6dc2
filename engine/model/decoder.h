// Generation without recomputing the prefix: the model of MODEL.md run on new
// positions only, over a KV cache. Each layer keeps the keys and values of the
// positions seen so far (after qk-norm and RoPE, as the attention reads them);
// a new position costs one position's work per layer: its embedding, its q, k
// and v, attention of its query over the cache, the MoE of that one token (its
// top-k experts), the dynamics, the head.
//
// Nothing else carries over from earlier positions: the velocity v of the INL
// dynamics starts at 0 for every position and threads through the layers of
// that position alone (MODEL.md "Forward": v is [N, H], a row per position), so
// a new position computes its own v column by column of the stack, like h.
//
// Capacity: generation is dropless. A model trained with a capacity_factor
// drops slots past an expert's capacity in token order within a micro-batch;
// a full forward over a sequence (Model) can therefore drop a slot of a
// position that the decoder, routing each position alone, keeps. The decoder
// and Model::forward agree exactly when the forward drops nothing.
#pragma once
#include <memory>
#include <vector>

#include "engine/config/config.h"
#include "engine/model/model_layers.h"
#include "engine/params/arena.h"
#include "engine/params/parameters.h"

namespace moe {

class Decoder {
public:
    // positions: the cache's length, the most positions the context can hold
    // (the model's train.seq_len: the positions it was trained at). rows: the
    // most positions one append() takes (a prefill's chunk). Parameters are
    // allocated for inference (masters and working copy, no gradients or
    // moments) on ops in its training precision; a plan larger than ops'
    // memory is refused before anything is allocated (ConfigError).
    Decoder(const ModelConfig& cfg, Ops& ops, int positions, int rows);
    ~Decoder();
    Decoder(const Decoder&) = delete;
    Decoder& operator=(const Decoder&) = delete;

    // Load or initialize these, then ParameterSet::refresh_work().
    ParameterSet& params() { return params_; }
    Ops& ops() const { return ops_; }
    int positions() const { return positions_; }
    int rows() const { return rows_; }
    int length() const { return length_; }  // positions in the cache
    size_t planned_bytes() const { return planned_bytes_; }

    // Appends n tokens (1 <= n <= rows(), length() + n <= positions(), ids in
    // [0, V)) at positions length().., computing their logits.
    void append(const int32_t* ids, int n);
    // The logits [n, V] (fp32) of the last append's positions, on ops.
    Tensor logits() const { return logits_.rows(0, appended_); }
    // Empties the cache: the next append starts at position 0.
    void clear() { length_ = 0; }

private:
    void carve();

    ModelConfig cfg_;  // the model's, dropless
    Ops& ops_;
    Precision pr_;
    int positions_, rows_;
    int length_ = 0, appended_ = 0;
    size_t planned_bytes_ = 0;
    ParameterSet params_;
    std::unique_ptr<ModelLayers> layers_;
    std::vector<int32_t> ids_host_;

    // state_: the caches and what lives across layers; work_: each layer's own
    // buffers, the same memory for every layer (nothing is kept for a backward).
    Arena state_, work_;
    std::vector<Tensor> k_cache_, v_cache_;  // [L] of [positions, nkv, hd]
    Tensor h_[2], v_[2];                     // residual and velocity streams, in and out of a block
    BlockActivations block_;
    Tensor ids_, hn_, rstd_, logits_, router_stats_;
};

}  // namespace moe
