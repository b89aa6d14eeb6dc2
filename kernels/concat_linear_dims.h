// The shapes of a linear over a row-wise concatenation, y[N,O] = [a | b] w^T
// with a [N,A], b [N,B], w [O,A+B] (concat_matmul_forward/backward), checked
// once for both backends.
#pragma once
#include <string>

#include "kernels/check.h"

namespace moe {

struct ConcatLinear {
    int64_t N, A, B, O;
};

inline ConcatLinear concat_linear_dims(const char* op, const Tensor& y, const Tensor& a, const Tensor& b,
                                       const Tensor& w) {
    const ConcatLinear s{a.dim(0), a.row_size(), b.row_size(), w.dim(0)};
    check(w.ndim == 2 && a.ndim == 2 && b.ndim == 2 && b.dim(0) == s.N && w.dim(1) == s.A + s.B &&
              y.numel() == s.N * s.O,
          op, "expected y [N,O] = [a | b] w^T with a [N,A], b [N,B], w [O,A+B]; got y " + y.shape_str() + ", a " +
                  a.shape_str() + ", b " + b.shape_str() + ", w " + w.shape_str());
    return s;
}

}  // namespace moe
