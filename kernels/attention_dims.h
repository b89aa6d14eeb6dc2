// The shapes of a causal GQA attention call, checked once for both backends:
// q/out [B,T,nh,hd], k/v [B,T,nkv,hd] with nkv dividing nh, lse [B,nh,T].
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

// Head sizes the CUDA attention kernels are built for.
constexpr bool gpu_attention_head_size(int64_t hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 128; }

}  // namespace moe
