// The shapes of a causal GQA attention call, checked once for both backends:
// q/out [B,T,nh,hd], k/v [B,T,nkv,hd] with nkv dividing nh, lse [B,nh,T]; and
// of attention over a KV cache (attention_decode).
#pragma once
#include <string>

#include "kernels/check.h"

namespace moe {

struct AttentionDims {
    int64_t B, T, nh, nkv, hd;
    int64_t group() const { return nh / nkv; }  // query heads per kv head
    // Offsets of (b, t, head) in q/out [B,T,nh,hd] and in k/v [B,T,nkv,hd].
    int64_t q_at(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * nh + h) * hd; }
    int64_t kv_at(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * nkv + h) * hd; }
    int64_t lse_at(int64_t b, int64_t h, int64_t t) const { return (b * nh + h) * T + t; }
};

// The shapes in one line, for messages.
inline std::string attention_shapes(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                    const Tensor& lse) {
    return "q " + q.shape_str() + ", k " + k.shape_str() + ", v " + v.shape_str() + ", out " + out.shape_str() +
           ", lse " + lse.shape_str();
}

inline AttentionDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse) {
    check(q.ndim == 4 && k.ndim == 4 && k.shape == v.shape, op,
          "expected q [B,T,nh,hd], k and v [B,T,nkv,hd]; got " + attention_shapes(q, k, v, out, lse));
    const AttentionDims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
    check(k.dim(0) == d.B && k.dim(1) == d.T && k.dim(3) == d.hd && d.nkv > 0 && d.nh % d.nkv == 0 &&
              out.numel() == q.numel() && lse.numel() == d.B * d.nh * d.T,
          op, "expected q [B,T,nh,hd], k and v [B,T,nkv,hd] with nkv dividing nh, out like q, lse [B,nh,T]; got " +
                  attention_shapes(q, k, v, out, lse));
    return d;
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
