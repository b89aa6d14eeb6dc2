// Memory planned once: an owner of one backend allocation from which tensors
// are carved. Sizing is a dry run of the same carving code (base == nullptr),
// so the plan and the use can never disagree.
#pragma once
#include <cstddef>
#include <initializer_list>

#include "kernels/ops.h"

namespace moe {

class Arena {
public:
    explicit Arena(Ops& ops) : ops_(&ops) {}
    // A plan only: it counts bytes and cannot allocate.
    Arena() = default;
    ~Arena();
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;

    // Carves the next tensor (256-byte aligned). Before allocate(), only
    // counts bytes and returns a tensor with no data. A size past 2^64 bytes
    // throws std::length_error.
    Tensor take(DType dtype, std::initializer_list<int64_t> dims);
    // Allocates what was counted (zero-filled) and restarts carving from it.
    void allocate();
    // Carves again from the start: for scratch that each layer reuses. The
    // plan is the largest extent ever carved.
    void rewind() { offset_ = 0; }
    size_t bytes() const { return size_; }
    bool allocated() const { return base_ != nullptr; }

private:
    Ops* ops_ = nullptr;
    char* base_ = nullptr;
    size_t size_ = 0;    // bytes planned
    size_t offset_ = 0;  // next free byte
};

}  // namespace moe
