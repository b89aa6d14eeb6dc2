// Cheap argument checks for ops (both backends): a wrong shape is a programming error
// that names the op and the shapes, never a silent out-of-bounds access.
#pragma once
#include <stdexcept>
#include <string>

#include "kernels/tensor.h"

namespace moe {

inline void check(bool ok, const char* op, const std::string& what) {
    if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

inline void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
    check(a.numel() == b.numel() && a.dtype == b.dtype, op,
          "tensors " + a.shape_str() + " " + dtype_name(a.dtype) + " and " + b.shape_str() + " " +
              dtype_name(b.dtype) + " differ");
}

}  // namespace moe
