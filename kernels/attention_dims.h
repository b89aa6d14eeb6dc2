// The shapes of a causal GQA attention call, checked once for both backends:
// q/out [B,T,nh,hd], k/v [B,T,nkv,hd] with nkv dividing nh, lse [B,nh,T]; and
// of attention over a KV cache (attention_decode). q, k and v (and the
// backward's dq, dk and dv) are Heads: whole tensors, or their heads inside
// the stacked projection's rows; out and dout are whole.
#pragma once
#include <string>

#include "kernels/check.h"
#include "kernels/heads.h"

namespace moe {

struct AttentionDims {
    int64_t B, T, nh, nkv, hd;
    int64_t q_row, kv_row;  // heads a position's row holds where q, and k and v, lie
    int64_t group() const { return nh / nkv; }  // query heads per kv head
    // Offsets of (b, t, head) from q's base, from k's or v's, and in out [B,T,nh,hd].
    int64_t q_at(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * q_row + h) * hd; }
    int64_t kv_at(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * kv_row + h) * hd; }
    int64_t out_at(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * nh + h) * hd; }
    int64_t lse_at(int64_t b, int64_t h, int64_t t) const { return (b * nh + h) * T + t; }
};

// The shapes in one line, for messages.
inline std::string attention_shapes(const Heads& q, const Heads& k, const Heads& v, const Tensor& out,
                                    const Tensor& lse) {
    return "q " + q.str() + ", k " + k.str() + ", v " + v.str() + ", out " + out.shape_str() + ", lse " +
           lse.shape_str();
}

inline AttentionDims attention_dims(const char* op, const Heads& q, const Heads& k, const Heads& v,
                                    const Tensor& out, const Tensor& lse) {
    const auto shapes = [&] { return attention_shapes(q, k, v, out, lse); };
    check(q.t.ndim == 4 && k.t.ndim == 4 && v.t.ndim == 4, op,
          "expected q [B,T,nh,hd], k and v [B,T,nkv,hd]; got " + shapes());
    const AttentionDims d{q.t.dim(0), q.t.dim(1), q.count, k.count, q.hd(), q.row(), k.row()};
    const auto same_positions = [&](const Heads& x) { return x.t.dim(0) == d.B && x.t.dim(1) == d.T; };
    check(same_positions(k) && same_positions(v) && k.hd() == d.hd && v.hd() == d.hd && v.count == d.nkv &&
              d.nkv > 0 && d.nh % d.nkv == 0 && out.numel() == d.B * d.T * d.nh * d.hd &&
              lse.numel() == d.B * d.nh * d.T,
          op, "expected q [B,T,nh,hd], k and v [B,T,nkv,hd] with nkv dividing nh, out like q, lse [B,nh,T]; got " +
                  shapes());
    // One row stride serves k and v (apart, or side by side in one tensor).
    check(v.row() == d.kv_row, op, "k and v must lie in rows of as many heads; got " + shapes());
    check(k.t.dtype == q.t.dtype && v.t.dtype == q.t.dtype && out.dtype == q.t.dtype, op,
          std::string("q, k, v and out must share a dtype; q is ") + dtype_name(q.t.dtype));
    return d;
}

// Where the backward writes: heads a position's row holds at dq, and at dk and dv.
struct AttentionGradRows {
    int64_t dq, dkv;
};

inline AttentionGradRows attention_grad_rows(const char* op, const AttentionDims& d, const Heads& dq,
                                             const Heads& dk, const Heads& dv, const Tensor& dout) {
    const auto fits = [&](const Heads& g, int64_t heads) {
        return g.empty() || (g.t.ndim == 4 && g.t.dim(0) == d.B && g.t.dim(1) == d.T && g.count == heads &&
                             g.hd() == d.hd);
    };
    check(dout.numel() == d.B * d.T * d.nh * d.hd && fits(dq, d.nh) && fits(dk, d.nkv) && fits(dv, d.nkv), op,
          "dout " + dout.shape_str() + ", dq " + dq.str() + ", dk " + dk.str() + ", dv " + dv.str() +
              " do not match B " + std::to_string(d.B) + ", T " + std::to_string(d.T) + ", nh " +
              std::to_string(d.nh) + ", nkv " + std::to_string(d.nkv) + ", hd " + std::to_string(d.hd));
    check(dk.empty() || dv.empty() || dk.row() == dv.row(), op,
          "dk and dv must lie in rows of as many heads; got dk " + dk.str() + ", dv " + dv.str());
    return {dq.empty() ? d.nh : dq.row(), !dk.empty() ? dk.row() : !dv.empty() ? dv.row() : d.nkv};
}

// The shapes of an attention_decode call: q/out [n,nh,hd] at positions
// first..first+n-1 over k/v caches [S,nkv,hd] with first + n <= S.
struct DecodeDims {
    int64_t n, nh, nkv, hd, S, first;
    int64_t group() const { return nh / nkv; }
    int64_t q_at(int64_t i, int64_t h) const { return (i * nh + h) * hd; }
    int64_t kv_at(int64_t s, int64_t h) const { return (s * nkv + h) * hd; }
};

inline DecodeDims decode_dims(const char* op, const Tensor& out, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t first) {
    const DecodeDims d{q.dim(0), q.ndim == 3 ? q.dim(1) : 0, k.ndim == 3 ? k.dim(1) : 0,
                       q.ndim == 3 ? q.dim(2) : 0, k.dim(0), first};
    check(q.ndim == 3 && k.ndim == 3 && k.shape == v.shape && out.numel() == q.numel() && k.dim(2) == d.hd &&
              d.nkv > 0 && d.nh % d.nkv == 0 && first >= 0 && first + d.n <= d.S,
          op, "expected q and out [n,nh,hd], k and v caches [S,nkv,hd] with nkv dividing nh, and first position + n <= "
              "S; got q " + q.shape_str() + ", k " + k.shape_str() + ", v " + v.shape_str() + ", out " +
              out.shape_str() + ", first position " + std::to_string(first));
    return d;
}

// The largest head size the CUDA attention_decode kernel takes.
constexpr int64_t kMaxDecodeHeadDim = 256;

// Head sizes the CUDA attention kernels are built for.
constexpr bool gpu_attention_head_size(int64_t hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 128; }

}  // namespace moe
