// Linear layers: y = x w^T + b and its backward, plus the grouped form that
// runs each expert's weight over its block of expert-sorted rows. Loops are
// blocked by 4 so each loaded row feeds four dot products or updates.
#include <algorithm>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

namespace {

template <class T> void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t O, int64_t I) {
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        const int64_t rows = std::min<int64_t>(4, N - n0);
        const T* x0 = x + n0 * I;
        const T* x1 = x0 + (rows > 1 ? I : 0);
        const T* x2 = x0 + (rows > 2 ? 2 * I : 0);
        const T* x3 = x0 + (rows > 3 ? 3 * I : 0);
        for (int64_t o = 0; o < O; ++o) {
            const T* wo = w + o * I;
            T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int64_t i = 0; i < I; ++i) {
                a0 += x0[i] * wo[i];
                a1 += x1[i] * wo[i];
                a2 += x2[i] * wo[i];
                a3 += x3[i] * wo[i];
            }
            const T bias = b ? b[o] : T(0);
            const T acc[4] = {a0, a1, a2, a3};
            for (int64_t r = 0; r < rows; ++r) y[(n0 + r) * O + o] = acc[r] + bias;
        }
    }
}

template <class T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t O, int64_t I) {
    if (dx) {
        // dx[n] += sum_o dy[n,o] w[o]
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            T* dxn = dx + n * I;
            for (int64_t o = 0; o < O; ++o) {
                const T g = dy[n * O + o];
                const T* wo = w + o * I;
#pragma omp simd
                for (int64_t i = 0; i < I; ++i) dxn[i] += g * wo[i];
            }
        }
    }
    if (dw) {
        // dw[o] += sum_n dy[n,o] x[n], four outputs per pass over x.
#pragma omp parallel for schedule(static)
        for (int64_t o0 = 0; o0 < O; o0 += 4) {
            const int64_t outs = std::min<int64_t>(4, O - o0);
            for (int64_t n = 0; n < N; ++n) {
                const T* xn = x + n * I;
                for (int64_t j = 0; j < outs; ++j) {
                    const T g = dy[n * O + o0 + j];
                    T* dwo = dw + (o0 + j) * I;
#pragma omp simd
                    for (int64_t i = 0; i < I; ++i) dwo[i] += g * xn[i];
                }
            }
        }
    }
    if (db) {
        for (int64_t o = 0; o < O; ++o) {
            T acc = 0;
            for (int64_t n = 0; n < N; ++n) acc += dy[n * O + o];
            db[o] += acc;
        }
    }
}

template <class T> T* data_or_null(const Tensor& t) { return t.empty() ? nullptr : t.ptr<T>(); }

}  // namespace

void CpuOps::matmul_forward(Tensor y, Tensor x, Tensor w, Tensor b) {
    const int64_t O = w.dim(0), I = w.dim(1), N = x.numel() / I;
    check(x.numel() == N * I && y.numel() == N * O && (b.empty() || b.numel() == O), "matmul_forward",
          "y " + y.shape_str() + " = x " + x.shape_str() + " w^T " + w.shape_str());
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        linear_forward<T>(y.ptr<T>(), x.ptr<T>(), w.ptr<T>(), data_or_null<T>(b), N, O, I);
    });
}

void CpuOps::matmul_backward(Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) {
    const int64_t O = w.dim(0), I = w.dim(1), N = x.numel() / I;
    check(dy.numel() == N * O && (dx.empty() || dx.numel() == N * I), "matmul_backward",
          "dy " + dy.shape_str() + ", x " + x.shape_str() + ", w " + w.shape_str());
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        linear_backward<T>(data_or_null<T>(dx), data_or_null<T>(dw), data_or_null<T>(db), dy.ptr<T>(), x.ptr<T>(),
                           w.ptr<T>(), N, O, I);
    });
}

void CpuOps::grouped_matmul_forward(Tensor y, Tensor x, Tensor w, const std::vector<int64_t>& offsets) {
    const int64_t E = w.dim(0);
    check(int64_t(offsets.size()) == E + 1 && offsets.back() == x.dim(0), "grouped_matmul_forward",
          "offsets do not split the " + std::to_string(x.dim(0)) + " rows over " + std::to_string(E) + " experts");
    for (int64_t e = 0; e < E; ++e) {
        if (offsets[e + 1] == offsets[e]) continue;
        matmul_forward(y.rows(offsets[e], offsets[e + 1]), x.rows(offsets[e], offsets[e + 1]),
                       w.rows(e, e + 1).view({w.dim(1), w.dim(2)}), {});
    }
}

void CpuOps::grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                     const std::vector<int64_t>& offsets) {
    const int64_t E = w.dim(0);
    check(int64_t(offsets.size()) == E + 1 && offsets.back() == x.dim(0), "grouped_matmul_backward",
          "offsets do not split the " + std::to_string(x.dim(0)) + " rows over " + std::to_string(E) + " experts");
    for (int64_t e = 0; e < E; ++e) {
        const int64_t lo = offsets[e], hi = offsets[e + 1];
        if (hi == lo) continue;
        const Tensor we = w.rows(e, e + 1).view({w.dim(1), w.dim(2)});
        matmul_backward(dx.empty() ? Tensor{} : dx.rows(lo, hi),
                        dw.empty() ? Tensor{} : dw.rows(e, e + 1).view({w.dim(1), w.dim(2)}), {}, dy.rows(lo, hi),
                        x.rows(lo, hi), we);
    }
}

}  // namespace moe
