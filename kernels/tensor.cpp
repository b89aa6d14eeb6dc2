#include "kernels/tensor.h"

namespace moe {

size_t dtype_size(DType dt) {
    switch (dt) {
        case DType::F32: return 4;
        case DType::F64: return 8;
        case DType::BF16: return 2;
        case DType::I32: return 4;
    }
    return 0;
}

const char* dtype_name(DType dt) {
    switch (dt) {
        case DType::F32: return "F32";
        case DType::F64: return "F64";
        case DType::BF16: return "BF16";
        case DType::I32: return "I32";
    }
    return "?";
}

Tensor::Tensor(void* p, DType dt, std::initializer_list<int64_t> dims) : data(p), dtype(dt) {
    if (dims.size() > size_t(kMaxDims)) throw std::logic_error("tensor with more than 4 dims");
    for (int64_t d : dims) shape[ndim++] = d;
}

int64_t Tensor::numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return ndim == 0 ? 0 : n;
}

int64_t Tensor::row_size() const {
    int64_t n = 1;
    for (int i = 1; i < ndim; ++i) n *= shape[i];
    return n;
}

std::string Tensor::shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
    if (ndim == 0 || begin < 0 || end < begin || end > shape[0])
        throw std::logic_error("rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of " + shape_str());
    Tensor t = *this;
    t.data = static_cast<char*>(data) + size_t(begin * row_size()) * dtype_size(dtype);
    t.shape[0] = end - begin;
    return t;
}

Tensor Tensor::view(std::initializer_list<int64_t> dims) const {
    Tensor t(data, dtype, dims);
    if (t.numel() != numel()) throw std::logic_error("view " + t.shape_str() + " of " + shape_str());
    return t;
}

}  // namespace moe
