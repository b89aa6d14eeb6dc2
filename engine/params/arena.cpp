#include "engine/params/arena.h"

#include <stdexcept>
#include <string>

namespace moe {

Arena::~Arena() {
    if (base_) ops_.release(base_);
}

Tensor Arena::take(DType dtype, std::initializer_list<int64_t> dims) {
    Tensor t(nullptr, dtype, dims);
    const size_t start = (offset_ + 255) & ~size_t(255);
    offset_ = start + t.bytes();
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
    base_ = static_cast<char*>(ops_.alloc(size_ ? size_ : 1));
    offset_ = 0;
}

}  // namespace moe
