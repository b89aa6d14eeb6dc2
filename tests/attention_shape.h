// The sizes of an attention test case and its buffers, and heads taken out
// of stacked rows (CPU and GPU tests).
#pragma once
#include <cstdint>
#include <vector>

namespace moe::test {

struct Shape {
    int64_t B, T, nh, nkv, hd;
    int64_t q_size() const { return B * T * nh * hd; }
    int64_t kv_size() const { return B * T * nkv * hd; }
    int64_t lse_size() const { return B * nh * T; }
};

// Heads [first, first + count) of each position of rows of `row` heads
// (hd values each), as a whole tensor's values.
template <class T>
std::vector<T> heads_apart(const std::vector<T>& rows, int64_t positions, int64_t row, int64_t first, int64_t count,
                           int64_t hd) {
    std::vector<T> out;
    for (int64_t p = 0; p < positions; ++p)
        out.insert(out.end(), rows.begin() + (p * row + first) * hd, rows.begin() + (p * row + first + count) * hd);
    return out;
}

}  // namespace moe::test
