// Linear layers: y = x w^T + b and its backward, the grouped form that runs
// each expert's weight over its block of expert-sorted rows, and the linear
// of a row-wise concatenation [a | b], each input against its own block of
// the weight's columns (w's rows have a leading dimension ldw >= I).
//
// All three products go through one kernel, C += A B: dx = dy w and
// dw = dy^T x directly (A is read through strides), y = x w^T through a
// transposed copy of w. The kernel keeps a tile of 4 rows x one cache line of
// C in registers over the whole sum, so each loaded value of B feeds four
// multiply-adds and C is written once.
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/check.h"
#include "kernels/concat_linear_dims.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

namespace {

constexpr int64_t kTileRows = 4;
template <class T> constexpr int64_t kTileCols = 64 / sizeof(T);

// The operands of C[M,K] += A[M,L] B[L,K]. A(r, l) = a[r * a_row + l * a_col],
// so A can be dy (a_row = O, a_col = 1) or dy^T (a_row = 1, a_col = O).
template <class T> struct Product {
    T* c;
    int64_t ldc;
    const T* a;
    int64_t a_row, a_col;
    const T* b;
    int64_t ldb;
    int64_t M, K, L;
};

// A full tile: kTileRows rows from r0, kTileCols columns from c0.
template <class T> void full_tile(const Product<T>& p, int64_t r0, int64_t c0) {
    constexpr int64_t W = kTileCols<T>;
    T acc0[W] = {}, acc1[W] = {}, acc2[W] = {}, acc3[W] = {};
    const T* a = p.a + r0 * p.a_row;
    for (int64_t l = 0; l < p.L; ++l) {
        const T* al = a + l * p.a_col;
        const T a0 = al[0], a1 = al[p.a_row], a2 = al[2 * p.a_row], a3 = al[3 * p.a_row];
        const T* bl = p.b + l * p.ldb + c0;
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
            acc0[c] += a0 * bl[c];
            acc1[c] += a1 * bl[c];
            acc2[c] += a2 * bl[c];
            acc3[c] += a3 * bl[c];
        }
    }
    T* cr = p.c + r0 * p.ldc + c0;
    for (int64_t c = 0; c < W; ++c) {
        cr[c] += acc0[c];
        cr[p.ldc + c] += acc1[c];
        cr[2 * p.ldc + c] += acc2[c];
        cr[3 * p.ldc + c] += acc3[c];
    }
}

// A partial tile at the bottom or right edge. Each element is summed over l
// in the same order as in a full tile, so the result is the same either way.
template <class T> void edge_tile(const Product<T>& p, int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
    for (int64_t r = r0; r < r0 + rows; ++r)
        for (int64_t c = c0; c < c0 + cols; ++c) {
            T acc = 0;
            for (int64_t l = 0; l < p.L; ++l) acc += p.a[r * p.a_row + l * p.a_col] * p.b[l * p.ldb + c];
            p.c[r * p.ldc + c] += acc;
        }
}

// Threads split C into fixed blocks of rows, each element owned by one thread
// and summed in l order: the result does not depend on the thread count.
template <class T> void accumulate_product(const Product<T>& p) {
    constexpr int64_t W = kTileCols<T>;
    const int64_t blocks = (p.M + kTileRows - 1) / kTileRows;
#pragma omp parallel for schedule(static) if (worth_threads(p.M * p.K * p.L))
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t r0 = blk * kTileRows, rows = std::min(kTileRows, p.M - r0);
        int64_t c0 = 0;
        if (rows == kTileRows)
            for (; c0 + W <= p.K; c0 += W) full_tile(p, r0, c0);
        if (c0 < p.K) edge_tile(p, r0, rows, c0, p.K - c0);
    }
}

// w[O,I] (rows ldw apart) transposed into a per-thread buffer that grows to
// the largest weight seen, so steady-state steps allocate nothing.
template <class T> const T* transposed(const T* w, int64_t O, int64_t I, int64_t ldw) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < size_t(O * I)) buffer.resize(size_t(O * I));
    T* wt = buffer.data();
    for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < I; ++i) wt[i * O + o] = w[o * ldw + i];
    return wt;
}

// y (+)= x w^T: with `start`, y starts as the bias (or 0) and the product
// accumulates onto it; without, it adds to what y holds.
template <class T>
void linear_forward(T* y, const T* x, const T* w, int64_t ldw, const T* b, int64_t N, int64_t O, int64_t I,
                    bool start = true) {
    if (start) {
#pragma omp parallel for schedule(static) if (worth_threads(N * O))
        for (int64_t n = 0; n < N; ++n) {
            T* yn = y + n * O;
            if (b)
                std::copy_n(b, O, yn);
            else
                std::fill_n(yn, O, T(0));
        }
    }
    accumulate_product(Product<T>{y, O, x, I, 1, transposed(w, O, I, ldw), O, N, O, I});
}

template <class T>
void linear_backward(T* dx, T* dw, int64_t ldw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t O,
                     int64_t I) {
    if (dx) accumulate_product(Product<T>{dx, I, dy, O, 1, w, ldw, N, I, O});  // dx[N,I] += dy[N,O] w[O,I]
    if (dw) accumulate_product(Product<T>{dw, ldw, dy, 1, O, x, I, O, I, N});  // dw[O,I] += dy^T[O,N] x[N,I]
    if (db)
        for (int64_t n = 0; n < N; ++n) {
            const T* dyn = dy + n * O;
#pragma omp simd
            for (int64_t o = 0; o < O; ++o) db[o] += dyn[o];
        }
}

template <class T> T* data_or_null(const Tensor& t) { return t.empty() ? nullptr : t.ptr<T>(); }

std::string shapes(const Tensor& y, const Tensor& x, const Tensor& w) {
    return "y " + y.shape_str() + ", x " + x.shape_str() + ", w " + w.shape_str();
}

// w is [O,I]; x holds whole rows of I. Returns N, the number of rows.
int64_t rows_of(const char* op, const Tensor& y, const Tensor& x, const Tensor& w) {
    check(w.ndim == 2 && w.dim(1) > 0 && x.numel() % w.dim(1) == 0 && y.numel() == x.numel() / w.dim(1) * w.dim(0),
          op, "expected y [N,O] = x [N,I] w^T with w [O,I]; got " + shapes(y, x, w));
    return x.numel() / w.dim(1);
}

void check_offsets(const char* op, const std::vector<int64_t>& offsets, int64_t E, int64_t R) {
    bool ok = int64_t(offsets.size()) == E + 1 && offsets.front() == 0 && offsets.back() == R;
    for (size_t e = 1; ok && e < offsets.size(); ++e) ok = offsets[e] >= offsets[e - 1];
    check(ok, op,
          "offsets must rise from 0 to the " + std::to_string(R) + " rows over " + std::to_string(E) + " experts");
}

// Expert e's weight [O,I], a view into the stack w[E,O,I].
Tensor expert(const Tensor& w, int64_t e) { return w.rows(e, e + 1).view({w.dim(1), w.dim(2)}); }

}  // namespace

void CpuOps::matmul_forward(Tensor y, Tensor x, Tensor w, Tensor b) {
    const int64_t N = rows_of("matmul_forward", y, x, w), O = w.dim(0), I = w.dim(1);
    check(b.empty() || b.numel() == O, "matmul_forward", "bias " + b.shape_str() + " for w " + w.shape_str());
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        linear_forward<T>(y.ptr<T>(), x.ptr<T>(), w.ptr<T>(), I, data_or_null<T>(b), N, O, I);
    });
}

void CpuOps::matmul_residual_forward(Tensor y, Tensor x, Tensor w, Tensor residual) {
    check_same_shape("matmul_residual_forward", y, residual);
    matmul_forward(y, x, w, {});
    add_tensors(y, residual, y);
}

void CpuOps::matmul_backward(Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w, Write dx_write,
                             Write dw_write) {
    const int64_t N = rows_of("matmul_backward", dy, x, w), O = w.dim(0), I = w.dim(1);
    check((dx.empty() || dx.numel() == x.numel()) && (dw.empty() || dw.numel() == w.numel()) &&
              (db.empty() || db.numel() == O),
          "matmul_backward",
          "gradients dx " + dx.shape_str() + ", dw " + dw.shape_str() + ", db " + db.shape_str() + " for " +
              shapes(dy, x, w));
    if (dx_write == Write::overwrite && !dx.empty()) zero(dx);
    if (dw_write == Write::overwrite)
        for (Tensor g : {dw, db})
            if (!g.empty()) zero(g);
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        linear_backward<T>(data_or_null<T>(dx), data_or_null<T>(dw), I, data_or_null<T>(db), dy.ptr<T>(), x.ptr<T>(),
                           w.ptr<T>(), N, O, I);
    });
}

void CpuOps::concat_matmul_forward(Tensor y, Tensor a, Tensor b, Tensor w, Tensor bias) {
    const ConcatLinear s = concat_linear_dims("concat_matmul_forward", y, a, b, w);
    check(bias.empty() || bias.numel() == s.O, "concat_matmul_forward",
          "bias " + bias.shape_str() + " for w " + w.shape_str());
    dispatch_float(a, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const int64_t ldw = s.A + s.B;
        linear_forward<T>(y.ptr<T>(), a.ptr<T>(), w.ptr<T>(), ldw, data_or_null<T>(bias), s.N, s.O, s.A);
        linear_forward<T>(y.ptr<T>(), b.ptr<T>(), w.ptr<T>() + s.A, ldw, nullptr, s.N, s.O, s.B, false);
    });
}

void CpuOps::concat_matmul_backward(Tensor da, Tensor db, Tensor dw, Tensor dbias, Tensor dy, Tensor a, Tensor b,
                                    Tensor w, Write dx_write, Write dw_write) {
    const ConcatLinear s = concat_linear_dims("concat_matmul_backward", dy, a, b, w);
    check((da.empty() || da.numel() == a.numel()) && (db.empty() || db.numel() == b.numel()) &&
              (dw.empty() || dw.numel() == w.numel()) && (dbias.empty() || dbias.numel() == s.O),
          "concat_matmul_backward",
          "gradients da " + da.shape_str() + ", db " + db.shape_str() + ", dw " + dw.shape_str() + ", dbias " +
              dbias.shape_str() + " for a " + a.shape_str() + ", b " + b.shape_str() + ", w " + w.shape_str());
    for (Tensor g : {da, db})
        if (dx_write == Write::overwrite && !g.empty()) zero(g);
    for (Tensor g : {dw, dbias})
        if (dw_write == Write::overwrite && !g.empty()) zero(g);
    dispatch_float(a, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const int64_t ldw = s.A + s.B;
        T* pdw = data_or_null<T>(dw);
        linear_backward<T>(data_or_null<T>(da), pdw, ldw, data_or_null<T>(dbias), dy.ptr<T>(), a.ptr<T>(),
                           w.ptr<T>(), s.N, s.O, s.A);
        linear_backward<T>(data_or_null<T>(db), pdw ? pdw + s.A : nullptr, ldw, nullptr, dy.ptr<T>(), b.ptr<T>(),
                           w.ptr<T>() + s.A, s.N, s.O, s.B);
    });
}

void CpuOps::grouped_matmul_forward(Tensor y, Tensor x, Tensor w, const std::vector<int64_t>& offsets) {
    check(w.ndim == 3 && x.ndim == 2 && y.ndim == 2 && y.dim(0) == x.dim(0), "grouped_matmul_forward",
          "expected y [R,O], x [R,I], w [E,O,I]; got " + shapes(y, x, w));
    check_offsets("grouped_matmul_forward", offsets, w.dim(0), x.dim(0));
    for (int64_t e = 0; e < w.dim(0); ++e) {
        const int64_t lo = offsets[e], hi = offsets[e + 1];
        if (hi > lo) matmul_forward(y.rows(lo, hi), x.rows(lo, hi), expert(w, e), {});
    }
}

void CpuOps::grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                     const std::vector<int64_t>& offsets, Write dx_write, Write dw_write) {
    check(w.ndim == 3 && x.ndim == 2 && dy.ndim == 2 && dy.dim(0) == x.dim(0) &&
              (dx.empty() || dx.numel() == x.numel()) && (dw.empty() || (dw.ndim == 3 && dw.shape == w.shape)),
          "grouped_matmul_backward",
          "expected dy [R,O], x [R,I], w [E,O,I] and gradients of their shapes; got " + shapes(dy, x, w) + ", dx " +
              dx.shape_str() + ", dw " + dw.shape_str());
    check_offsets("grouped_matmul_backward", offsets, w.dim(0), x.dim(0));
    if (dx_write == Write::overwrite && !dx.empty()) zero(dx);
    if (dw_write == Write::overwrite && !dw.empty()) zero(dw);
    for (int64_t e = 0; e < w.dim(0); ++e) {
        const int64_t lo = offsets[e], hi = offsets[e + 1];
        if (hi == lo) continue;
        matmul_backward(dx.empty() ? Tensor{} : dx.rows(lo, hi), dw.empty() ? Tensor{} : expert(dw, e), {},
                        dy.rows(lo, hi), x.rows(lo, hi), expert(w, e), Write::add, Write::add);
    }
}

}  // namespace moe
