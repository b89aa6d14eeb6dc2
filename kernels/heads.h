// Heads [first, first + count) of every position of a [B, T, heads, hd]
// tensor: a whole tensor, or q, k or v where the stacked projection's output
// [B, T, nh + 2 nkv, hd] holds them side by side (each position's q heads,
// then its k heads, then its v heads). RoPE and attention read and write
// such views, so that q, k and v need not be copied out of the stacked rows.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/tensor.h"

namespace moe {

struct Heads {
    Tensor t;           // [B, T, row, hd]
    int64_t first = 0;  // the view's first head in each position's row
    int64_t count = 0;  // heads in the view

    Heads() = default;
    // Every head of t: a whole tensor is a view of itself.
    Heads(Tensor whole);  // NOLINT(google-explicit-constructor)
    // Heads [first, first + count) of a [B, T, heads, hd] tensor.
    Heads(Tensor packed, int64_t first, int64_t count);

    bool empty() const { return t.empty(); }
    int64_t row() const { return t.dim(2); }  // heads a position's row holds
    int64_t hd() const { return t.dim(3); }
    // Offset of head h of position (b, s), in elements from base().
    int64_t at(int64_t b, int64_t s, int64_t h) const { return ((b * t.dim(1) + s) * row() + h) * hd(); }
    // The view's first element: head `first` of the first position.
    void* base() const { return static_cast<char*>(t.data) + size_t(first * hd()) * dtype_size(t.dtype); }
    template <class T> T* ptr() const { return t.ptr<T>() + first * hd(); }
    std::string str() const;  // the tensor's shape and, for a part, which heads
};

}  // namespace moe
