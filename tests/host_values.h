// An F32 or F64 tensor of a backend's memory as doubles on the host, and back.
#pragma once
#include <vector>

#include "kernels/ops.h"

namespace moe::test {

inline std::vector<double> host_values(Ops& ops, const Tensor& t) {
    if (t.dtype == DType::F64) {
        std::vector<double> v(static_cast<size_t>(t.numel()));
        ops.copy_to_host(v.data(), t);
        return v;
    }
    std::vector<float> f(static_cast<size_t>(t.numel()));
    ops.copy_to_host(f.data(), t);
    return std::vector<double>(f.begin(), f.end());
}

inline void upload_values(Ops& ops, const Tensor& t, const std::vector<double>& v) {
    if (t.dtype == DType::F64) return ops.copy_from_host(t, v.data());
    const std::vector<float> f(v.begin(), v.end());
    ops.copy_from_host(t, f.data());
}

}  // namespace moe::test
