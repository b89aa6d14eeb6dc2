// The shapes of split_qkv and join_qkv, checked once for both backends: the
// fused projection's output qkv [B,T,nh+2nkv,hd] (each position's q heads,
// then its k heads, then its v heads) against q [B,T,nh,hd], k and v
// [B,T,nkv,hd], all of one dtype.
#pragma once
#include <string>

#include "kernels/check.h"

namespace moe {

struct QkvDims {
    int64_t positions, nh, nkv, hd;
    int64_t heads() const { return nh + 2 * nkv; }  // of qkv, a position
};

inline QkvDims qkv_dims(const char* op, const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v) {
    const std::string shapes =
        "qkv " + qkv.shape_str() + ", q " + q.shape_str() + ", k " + k.shape_str() + ", v " + v.shape_str();
    check(qkv.ndim == 4 && q.ndim == 4 && k.ndim == 4 && k.shape == v.shape, op,
          "expected qkv [B,T,nh+2nkv,hd], q [B,T,nh,hd], k and v [B,T,nkv,hd]; got " + shapes);
    const QkvDims d{q.dim(0) * q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
    check(qkv.dim(0) == q.dim(0) && qkv.dim(1) == q.dim(1) && k.dim(0) == q.dim(0) && k.dim(1) == q.dim(1) &&
              qkv.dim(3) == d.hd && k.dim(3) == d.hd && qkv.dim(2) == d.heads(),
          op, "expected qkv [B,T,nh+2nkv,hd] for q [B,T,nh,hd], k and v [B,T,nkv,hd]; got " + shapes);
    check(q.dtype == qkv.dtype && k.dtype == qkv.dtype && v.dtype == qkv.dtype, op,
          std::string("qkv, q, k and v must share a dtype; qkv is ") + dtype_name(qkv.dtype));
    return d;
}

}  // namespace moe
