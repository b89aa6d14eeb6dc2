#include "engine/model/attention_layer.h"

#include <string>

namespace moe {

AttentionLayer::AttentionLayer(const ModelConfig& cfg, ParameterSet& params, int layer) : cfg_(cfg) {
    const std::string p = "layers." + std::to_string(layer) + ".attn.";
    const int64_t H = cfg.hidden_size, hd = cfg.head_dim(), nh = cfg.num_heads, nkv = cfg.num_kv_heads;
    const InitSpec init = InitSpec::normal(cfg.init_std);
    wqkv_ = &params.add(p + "wqkv", {(nh + 2 * nkv) * hd, H}, init, true, -1,
                        {{p + "wq", nh * hd}, {p + "wk", nkv * hd}, {p + "wv", nkv * hd}});
    wo_ = &params.add(p + "wo", {H, nh * hd}, init, true);
    if (cfg.qk_norm) {
        q_norm_ = &params.add(p + "q_norm.weight", {hd}, InitSpec::fill(1), false);
        k_norm_ = &params.add(p + "k_norm.weight", {hd}, InitSpec::fill(1), false);
    }
}

void AttentionLayer::carve(Arena& acts, Arena& scratch, const Precision& pr, int B, int T) {
    B_ = B;
    T_ = T;
    const int64_t N = int64_t(B) * T, hd = cfg_.head_dim(), nh = cfg_.num_heads, nkv = cfg_.num_kv_heads;
    const DType dt = pr.act;
    att_ = acts.take(dt, {B, T, nh, hd});
    lse_ = acts.take(pr.stat, {B, nh, T});
    datt_ = scratch.take(dt, {B, T, nh, hd});
    if (!cfg_.qk_norm) {
        // q, k and v stay where the projection writes them (q and k turned
        // there), and their gradients go where its backward GEMMs read them.
        qkv_ = acts.take(dt, {B, T, nh + 2 * nkv, hd});
        dqkv_ = scratch.take(dt, {B, T, nh + 2 * nkv, hd});
        return;
    }
    // qk-norm normalizes rows of their own: q, k and v copied out, their
    // gradients joined back (the projection's output and its gradient share
    // one buffer).
    qkv_ = dqkv_ = scratch.take(dt, {B, T, nh + 2 * nkv, hd});
    q_ = acts.take(dt, {B, T, nh, hd});
    k_ = acts.take(dt, {B, T, nkv, hd});
    v_ = acts.take(dt, {B, T, nkv, hd});
    q_raw_ = acts.take(dt, {N * nh, hd});
    k_raw_ = acts.take(dt, {N * nkv, hd});
    rstd_q_ = acts.take(pr.stat, {N * nh});
    rstd_k_ = acts.take(pr.stat, {N * nkv});
    dq_ = scratch.take(dt, {B, T, nh, hd});
    dk_ = scratch.take(dt, {B, T, nkv, hd});
    dv_ = scratch.take(dt, {B, T, nkv, hd});
    dq_raw_ = scratch.take(dt, {N * nh, hd});
    dk_raw_ = scratch.take(dt, {N * nkv, hd});
}

void AttentionLayer::carve_decode(Arena& work, const Precision& pr, int64_t rows) {
    const int64_t hd = cfg_.head_dim(), nh = cfg_.num_heads, nkv = cfg_.num_kv_heads;
    q_ = work.take(pr.act, {rows, nh, hd});
    att_ = work.take(pr.act, {rows, nh, hd});
    if (cfg_.qk_norm) {
        q_raw_ = work.take(pr.act, {rows * nh, hd});
        k_raw_ = work.take(pr.act, {rows * nkv, hd});
        rstd_q_ = work.take(pr.stat, {rows * nh});
        rstd_k_ = work.take(pr.stat, {rows * nkv});
    }
}

AttentionLayer::QkvHeads AttentionLayer::heads_of(Tensor packed) const {
    const int64_t nh = cfg_.num_heads, nkv = cfg_.num_kv_heads;
    return {Heads(packed, 0, nh), Heads(packed, nh, nkv), Heads(packed, nh + nkv, nkv)};
}

void AttentionLayer::forward(Ops& ops, Tensor x, Tensor residual, Tensor out) {
    const int64_t N = x.dim(0), nh = cfg_.num_heads, nkv = cfg_.num_kv_heads, hd = cfg_.head_dim();
    ops.matmul_forward(qkv_.view({N, (nh + 2 * nkv) * hd}), x, wqkv_->work, {});
    if (cfg_.qk_norm) {
        ops.split_qkv(q_raw_.view({B_, T_, nh, hd}), k_raw_.view({B_, T_, nkv, hd}), v_, qkv_);
        ops.rmsnorm_forward(q_.view({N * nh, hd}), rstd_q_, q_raw_, q_norm_->work, cfg_.norm_eps);
        ops.rmsnorm_forward(k_.view({N * nkv, hd}), rstd_k_, k_raw_, k_norm_->work, cfg_.norm_eps);
        ops.rope_forward(q_, cfg_.rope_theta, 0);
        ops.rope_forward(k_, cfg_.rope_theta, 0);
        ops.attention_forward(att_, lse_, q_, k_, v_);
    } else {
        ops.rope_forward(Heads(qkv_, 0, nh + nkv), cfg_.rope_theta, 0);  // q and k, where they lie
        const QkvHeads h = heads_of(qkv_);
        ops.attention_forward(att_, lse_, h.q, h.k, h.v);
    }
    ops.matmul_residual_forward(out, att_.view({N, nh * hd}), wo_->work, residual);
}

void AttentionLayer::decode(Ops& ops, Tensor x, Tensor residual, Tensor out, Tensor k_cache, Tensor v_cache,
                            int64_t position) {
    const int64_t n = x.dim(0), nh = cfg_.num_heads, nkv = cfg_.num_kv_heads, hd = cfg_.head_dim();
    const Tensor q = q_.rows(0, n), att = att_.rows(0, n);
    const Tensor k = k_cache.rows(position, position + n), v = v_cache.rows(position, position + n);
    // The stacked projection's row blocks, straight into q and the caches.
    const Tensor w = wqkv_->work;
    const Tensor wq = w.rows(0, nh * hd), wk = w.rows(nh * hd, (nh + nkv) * hd), wv = w.rows((nh + nkv) * hd, w.dim(0));
    if (cfg_.qk_norm) {
        const Tensor q_raw = q_raw_.rows(0, n * nh), k_raw = k_raw_.rows(0, n * nkv);
        ops.matmul_forward(q_raw.view({n, nh * hd}), x, wq, {});
        ops.matmul_forward(k_raw.view({n, nkv * hd}), x, wk, {});
        ops.rmsnorm_forward(q.view({n * nh, hd}), rstd_q_.rows(0, n * nh), q_raw, q_norm_->work, cfg_.norm_eps);
        ops.rmsnorm_forward(k.view({n * nkv, hd}), rstd_k_.rows(0, n * nkv), k_raw, k_norm_->work, cfg_.norm_eps);
    } else {
        ops.matmul_forward(q.view({n, nh * hd}), x, wq, {});
        ops.matmul_forward(k.view({n, nkv * hd}), x, wk, {});
    }
    ops.matmul_forward(v.view({n, nkv * hd}), x, wv, {});
    ops.rope_forward(q.view({1, n, nh, hd}), cfg_.rope_theta, position);
    ops.rope_forward(k.view({1, n, nkv, hd}), cfg_.rope_theta, position);
    ops.attention_decode(att, q, k_cache, v_cache, position);
    ops.matmul_residual_forward(out, att.view({n, nh * hd}), wo_->work, residual);
}

void AttentionLayer::backward(Ops& ops, Tensor x, Tensor dout, Tensor dx, Write grads) {
    const int64_t N = x.dim(0), nh = cfg_.num_heads, nkv = cfg_.num_kv_heads, hd = cfg_.head_dim();
    ops.matmul_backward(datt_.view({N, nh * hd}), wo_->grad, {}, dout, att_.view({N, nh * hd}), wo_->work,
                        Write::overwrite, grads);
    // dq and dk come out turned back through RoPE (the attention's pass).
    if (cfg_.qk_norm) {
        ops.attention_backward(dq_, dk_, dv_, datt_, q_, k_, v_, att_, lse_, Write::overwrite, cfg_.rope_theta);
        ops.rmsnorm_backward(dq_raw_, q_norm_->grad, dq_.view({N * nh, hd}), q_raw_, q_norm_->work, rstd_q_,
                             Write::overwrite, grads);
        ops.rmsnorm_backward(dk_raw_, k_norm_->grad, dk_.view({N * nkv, hd}), k_raw_, k_norm_->work, rstd_k_,
                             Write::overwrite, grads);
        ops.join_qkv(dqkv_, dq_raw_.view({B_, T_, nh, hd}), dk_raw_.view({B_, T_, nkv, hd}), dv_);
    } else {
        const QkvHeads h = heads_of(qkv_), dh = heads_of(dqkv_);
        ops.attention_backward(dh.q, dh.k, dh.v, datt_, h.q, h.k, h.v, att_, lse_, Write::overwrite,
                               cfg_.rope_theta);
    }
    // The three projections' gradients as the stacked projection's: one GEMM
    // for dx, one for the weights' gradient.
    ops.matmul_backward(dx, wqkv_->grad, {}, dqkv_.view({N, (nh + 2 * nkv) * hd}), x, wqkv_->work, Write::overwrite,
                        grads);
}

}  // namespace moe
