// Memory, copies, elementwise updates and reductions on host buffers.
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

void* CpuOps::alloc(size_t bytes) {
    const size_t rounded = (bytes + 255) & ~size_t(255);
    void* p = std::aligned_alloc(256, rounded);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, rounded);
    return p;
}

void CpuOps::release(void* p) { std::free(p); }

void CpuOps::copy_from_host(Tensor dst, const void* src) {
    if (dst.bytes()) std::memcpy(dst.data, src, dst.bytes());
}

void CpuOps::copy_to_host(void* dst, Tensor src) {
    if (src.bytes()) std::memcpy(dst, src.data, src.bytes());
}

void CpuOps::zero(Tensor t) {
    if (t.bytes()) std::memset(t.data, 0, t.bytes());
}

void CpuOps::copy(Tensor dst, Tensor src) {
    check_same_shape("copy", dst, src);
    if (src.bytes()) std::memmove(dst.data, src.data, src.bytes());
}

void CpuOps::add(Tensor y, Tensor x, double alpha) {
    check_same_shape("add", y, x);
    dispatch_float(y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* py = y.ptr<T>();
        const T* px = x.ptr<T>();
        const T a = T(alpha);
        const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; ++i) py[i] += a * px[i];
    });
}

void CpuOps::scale(Tensor y, double alpha) {
    dispatch_float(y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* py = y.ptr<T>();
        const int64_t n = y.numel();
        for (int64_t i = 0; i < n; ++i) py[i] *= T(alpha);
    });
}

namespace {
// Serial double sums: a fixed order, so the result never depends on threads.
template <class F> double reduce(const Tensor& x, F term) {
    double s = 0;
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* p = x.ptr<T>();
        const int64_t n = x.numel();
        for (int64_t i = 0; i < n; ++i) s += term(double(p[i]));
    });
    return s;
}
}  // namespace

double CpuOps::sum_squares(Tensor x) {
    return reduce(x, [](double v) { return v * v; });
}

double CpuOps::sum(Tensor x) {
    return reduce(x, [](double v) { return v; });
}

void CpuOps::concat_cols_forward(Tensor out, Tensor a, Tensor b) {
    const int64_t N = out.dim(0), A = a.row_size(), Bc = b.row_size();
    check(a.dim(0) == N && b.dim(0) == N && out.row_size() == A + Bc, "concat_cols_forward",
          "out " + out.shape_str() + " is not [a | b] of " + a.shape_str() + " and " + b.shape_str());
    dispatch_float(out, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* po = out.ptr<T>();
        const T *pa = a.ptr<T>(), *pb = b.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            std::memcpy(po + n * (A + Bc), pa + n * A, A * sizeof(T));
            std::memcpy(po + n * (A + Bc) + A, pb + n * Bc, Bc * sizeof(T));
        }
    });
}

void CpuOps::concat_cols_backward(Tensor da, Tensor db, Tensor dout) {
    const int64_t N = dout.dim(0), W = dout.row_size();
    const int64_t A = da.empty() ? W - db.row_size() : da.row_size();
    dispatch_float(dout, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* pd = dout.ptr<T>();
        T* pa = da.empty() ? nullptr : da.ptr<T>();
        T* pb = db.empty() ? nullptr : db.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            if (pa)
                for (int64_t i = 0; i < A; ++i) pa[n * A + i] += pd[n * W + i];
            if (pb)
                for (int64_t i = 0; i < W - A; ++i) pb[n * (W - A) + i] += pd[n * W + A + i];
        }
    });
}

}  // namespace moe
