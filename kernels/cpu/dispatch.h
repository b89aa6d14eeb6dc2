// Calls fn with a null pointer of the tensor's float type (F32 or F64), so each
// CPU op is written once as a template: dispatch_float(t, [&](auto tag) {
// using T = std::remove_pointer_t<decltype(tag)>; ... }).
#pragma once
#include <stdexcept>
#include <string>

#include "kernels/tensor.h"

namespace moe {

template <class F> void dispatch_float(const Tensor& t, F&& fn) {
    switch (t.dtype) {
        case DType::F32: fn(static_cast<float*>(nullptr)); return;
        case DType::F64: fn(static_cast<double*>(nullptr)); return;
        default: throw std::logic_error(std::string("CPU op on unsupported dtype ") + dtype_name(t.dtype));
    }
}

}  // namespace moe
