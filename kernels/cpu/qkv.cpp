// The fused q, k, v projection's output split into heads and joined back
// (ops.h).
#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/parallel.h"
#include "kernels/qkv_dims.h"

namespace moe {

namespace {

// Copies each position's heads between packed [positions, nh+2nkv, hd] and
// q, k, v: out of the packed rows (to_parts) or into them.
void copy_heads(const QkvDims& d, char* packed, char* q, char* k, char* v, size_t elem, bool to_parts) {
    const size_t head = size_t(d.hd) * elem, row = size_t(d.heads()) * head;
    const size_t qn = size_t(d.nh) * head, kn = size_t(d.nkv) * head;
#pragma omp parallel for schedule(static) if (worth_threads(d.positions * d.heads() * d.hd))
    for (int64_t p = 0; p < d.positions; ++p) {
        char* at = packed + size_t(p) * row;
        char* parts[3] = {q + size_t(p) * qn, k + size_t(p) * kn, v + size_t(p) * kn};
        const size_t sizes[3] = {qn, kn, kn};
        for (int i = 0; i < 3; ++i) {
            if (to_parts)
                std::memcpy(parts[i], at, sizes[i]);
            else
                std::memcpy(at, parts[i], sizes[i]);
            at += sizes[i];
        }
    }
}

}  // namespace

void CpuOps::split_qkv(Tensor q, Tensor k, Tensor v, Tensor qkv) {
    const QkvDims d = qkv_dims("split_qkv", qkv, q, k, v);
    copy_heads(d, static_cast<char*>(qkv.data), static_cast<char*>(q.data), static_cast<char*>(k.data),
               static_cast<char*>(v.data), dtype_size(qkv.dtype), true);
}

void CpuOps::join_qkv(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv) {
    const QkvDims d = qkv_dims("join_qkv", dqkv, dq, dk, dv);
    copy_heads(d, static_cast<char*>(dqkv.data), static_cast<char*>(dq.data), static_cast<char*>(dk.data),
               static_cast<char*>(dv.data), dtype_size(dqkv.dtype), false);
}

}  // namespace moe
