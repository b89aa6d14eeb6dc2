// Causal GQA self-attention with RoPE and optional qk-norm (MODEL.md):
// q, k, v projections, per-head RMSNorm of q and k, rotary positions,
// softmax(q k^T / sqrt(hd)) v, output projection. Forward and backward over
// whole sequences (training), and new positions over a KV cache (generation).
#pragma once
#include "engine/params/arena.h"
#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe {

class AttentionLayer {
public:
    AttentionLayer(const ModelConfig& cfg, ParameterSet& params, int layer);
    // Saved activations in acts (per layer), temporaries in scratch (shared).
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int B, int T);
    // out[N,H] = residual + attention(x[N,H]); x is the normed layer input
    // (the residual add rides the output projection's GEMM).
    void forward(Ops& ops, Tensor x, Tensor residual, Tensor out);
    // dx = d/dx of sum(dout * out) (overwritten); parameter gradients are
    // written as grads says.
    void backward(Ops& ops, Tensor x, Tensor dout, Tensor dx, Write grads);

    // Generation: the buffers decode() needs for up to `rows` new positions, in
    // work (nothing is kept between calls).
    void carve_decode(Arena& work, const Precision& pr, int64_t rows);
    // out[n,H] = residual + attention of n new positions (x[n,H], normed),
    // the first at `position`, over the cache k_cache, v_cache [S,nkv,hd]:
    // their keys and values (after qk-norm and RoPE) are written into rows
    // position..+n-1, then each attends to the rows up to its own.
    void decode(Ops& ops, Tensor x, Tensor residual, Tensor out, Tensor k_cache, Tensor v_cache, int64_t position);

private:
    // q, k and v where the stacked projection's rows hold them.
    struct QkvHeads {
        Heads q, k, v;
    };
    QkvHeads heads_of(Tensor packed) const;

    const ModelConfig& cfg_;
    int B_ = 0, T_ = 0;
    // wq, wk and wv stacked [(nh + 2 nkv) hd, H] (files see the three): one
    // GEMM projects x to every head, one takes their gradients back.
    Param *wqkv_, *wo_;
    Param *q_norm_ = nullptr, *k_norm_ = nullptr;
    // The stacked projection's output qkv [B,T,nh+2nkv,hd] and its gradient.
    // Without qk-norm qkv is saved (q and k turned by RoPE in place) and
    // attention reads and writes heads in it; with qk-norm both are one
    // scratch buffer, and the saved q, k, v are copies: the projections
    // before qk-norm, normed and rotated q and k, values.
    Tensor qkv_, dqkv_, q_raw_, k_raw_, q_, k_, v_;
    // saved: attention output, per-head norm statistics, softmax log-sum-exp
    Tensor att_, rstd_q_, rstd_k_, lse_;
    // scratch: gradients
    Tensor dq_, dk_, dv_, datt_, dq_raw_, dk_raw_;
};

}  // namespace moe
