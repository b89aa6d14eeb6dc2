// RMSNorm over the last dim: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps),
// statistics in double. Backward, with xhat = x * rstd:
//   dx = rstd * (w dy - xhat * mean(w dy xhat)),  dw = sum over rows of dy xhat.
#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

namespace {

// x [R,D] (any leading dims), w [D], rstd [R]; y or dy like x. Returns R.
int64_t rows_of(const char* op, const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w) {
    const int64_t D = w.numel();
    check(D > 0 && x.numel() % D == 0 && y.numel() == x.numel() && rstd.numel() == x.numel() / D, op,
          "expected x [R,D], w [D], rstd [R] and an output like x; got x " + x.shape_str() + ", w " + w.shape_str() +
              ", rstd " + rstd.shape_str() + ", output " + y.shape_str());
    return x.numel() / D;
}

}  // namespace

void CpuOps::rmsnorm_forward(Tensor y, Tensor rstd, Tensor x, Tensor w, double eps) {
    const int64_t R = rows_of("rmsnorm_forward", y, rstd, x, w), D = w.numel();
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *px = x.ptr<T>(), *pw = w.ptr<T>();
        T *py = y.ptr<T>(), *pr = rstd.ptr<T>();
#pragma omp parallel for schedule(static) if (worth_threads(R * D))
        for (int64_t r = 0; r < R; ++r) {
            const T* xr = px + r * D;
            double ss = 0;
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < D; ++i) ss += double(xr[i]) * double(xr[i]);
            const T s = T(1.0 / std::sqrt(ss / double(D) + eps));
            pr[r] = s;
            T* yr = py + r * D;
#pragma omp simd
            for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * s * pw[i];
        }
    });
}

void CpuOps::rmsnorm_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd, Write dx_write,
                              Write dw_write) {
    const int64_t R = rows_of("rmsnorm_backward", dy, rstd, x, w), D = w.numel();
    check((dx.empty() || dx.numel() == x.numel()) && (dw.empty() || dw.numel() == D), "rmsnorm_backward",
          "gradients dx " + dx.shape_str() + ", dw " + dw.shape_str() + " for x " + x.shape_str() + ", w " +
              w.shape_str());
    if (dx_write == Write::overwrite && !dx.empty()) zero(dx);
    if (dw_write == Write::overwrite && !dw.empty()) zero(dw);
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *px = x.ptr<T>(), *pw = w.ptr<T>(), *pdy = dy.ptr<T>(), *pr = rstd.ptr<T>();
        if (!dx.empty()) {
            T* pdx = dx.ptr<T>();
#pragma omp parallel for schedule(static) if (worth_threads(R * D))
            for (int64_t r = 0; r < R; ++r) {
                const T *xr = px + r * D, *dyr = pdy + r * D;
                const double s = pr[r];
                double dot = 0;
#pragma omp simd reduction(+ : dot)
                for (int64_t i = 0; i < D; ++i) dot += double(pw[i]) * double(dyr[i]) * double(xr[i]);
                const double m = dot * s / double(D);  // mean(w dy xhat)
                T* dxr = pdx + r * D;
#pragma omp simd
                for (int64_t i = 0; i < D; ++i) dxr[i] += T(s * (double(pw[i]) * dyr[i] - double(xr[i]) * s * m));
            }
        }
        if (!dw.empty()) {
            T* pdw = dw.ptr<T>();
            // Threads split the columns into fixed blocks and walk the rows in
            // order, so each column's sum is the serial one.
            constexpr int64_t kCols = 32;
#pragma omp parallel for schedule(static) if (worth_threads(R * D))
            for (int64_t c0 = 0; c0 < D; c0 += kCols) {
                const int64_t cols = std::min(kCols, D - c0);
                double acc[kCols] = {};
                for (int64_t r = 0; r < R; ++r) {
                    const T *xr = px + r * D + c0, *dyr = pdy + r * D + c0;
                    const double s = pr[r];
                    for (int64_t i = 0; i < cols; ++i) acc[i] += double(dyr[i]) * double(xr[i]) * s;
                }
                for (int64_t i = 0; i < cols; ++i) pdw[c0 + i] += T(acc[i]);
            }
        }
    });
}

}  // namespace moe
