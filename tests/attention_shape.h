// The sizes of an attention test case and its buffers (CPU and GPU tests).
#pragma once
#include <cstdint>

namespace moe::test {

struct Shape {
    int64_t B, T, nh, nkv, hd;
    int64_t q_size() const { return B * T * nh * hd; }
    int64_t kv_size() const { return B * T * nkv * hd; }
    int64_t lse_size() const { return B * nh * T; }
};

}  // namespace moe::test
