#include "engine/params/arena.h"

#include <stdexcept>
#include <string>

namespace moe {

Arena::~Arena() {
    if (base_) ops_->release(base_);
}

Tensor Arena::take(DType dtype, std::initializer_list<int64_t> dims) {
    // Sizes of absurd configs are caught here, before they wrap around.
    size_t bytes = dtype_size(dtype), start = 0;
    for (int64_t d : dims)
        if (d < 0 || __builtin_mul_overflow(bytes, size_t(d), &bytes)) throw std::length_error("arena: buffer too large");
    if (__builtin_add_overflow(offset_, size_t(255), &start) || __builtin_add_overflow(start & ~size_t(255), bytes, &offset_))
        throw std::length_error("arena: plan too large");
    start &= ~size_t(255);
    Tensor t(nullptr, dtype, dims);
    if (!base_) {
        if (offset_ > size_) size_ = offset_;
        return t;
    }
    if (offset_ > size_) throw std::logic_error("arena: carving past the planned " + std::to_string(size_) + " bytes");
    t.data = base_ + start;
    return t;
}

void Arena::allocate() {
    if (base_) throw std::logic_error("arena: allocated twice");
    if (!ops_) throw std::logic_error("arena: a plan only, it has no backend to allocate from");
    base_ = static_cast<char*>(ops_->alloc(size_ ? size_ : 1));
    offset_ = 0;
}

}  // namespace moe
