// A typed, non-owning view of a buffer on a backend's device. Ops take views;
// the memory belongs to an arena (engine/arena.h).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace moe {

enum class DType : uint8_t { F32, F64, BF16, I32 };

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }

struct Tensor {
    static constexpr int kMaxDims = 4;
    void* data = nullptr;
    DType dtype = DType::F32;
    int ndim = 0;
    std::array<int64_t, kMaxDims> shape{};

    Tensor() = default;
    Tensor(void* p, DType dt, std::initializer_list<int64_t> dims);

    bool empty() const { return data == nullptr; }
    int64_t numel() const;
    int64_t dim(int i) const { return shape.at(i < 0 ? ndim + i : i); }
    size_t bytes() const { return size_t(numel()) * dtype_size(dtype); }
    // Elements per row of dim 0 (product of the trailing dims).
    int64_t row_size() const;
    std::string shape_str() const;

    // Rows [begin, end) of dim 0, sharing memory.
    Tensor rows(int64_t begin, int64_t end) const;
    // Same memory, new shape with the same element count.
    Tensor view(std::initializer_list<int64_t> dims) const;

    template <class T> T* ptr() const {
        if (dtype != dtype_of<T>())
            throw std::logic_error(std::string("tensor is ") + dtype_name(dtype) + ", accessed as another dtype");
        return static_cast<T*>(data);
    }
};

}  // namespace moe
