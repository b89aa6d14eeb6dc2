// RMSNorm over the last dim: y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).
#include <cmath>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

void CpuOps::rmsnorm_forward(Tensor y, Tensor rstd, Tensor x, Tensor w, double eps) {
    const int64_t D = w.numel(), R = x.numel() / D;
    check(x.numel() == R * D && y.numel() == x.numel() && rstd.numel() == R, "rmsnorm_forward",
          "x " + x.shape_str() + ", y " + y.shape_str() + ", rstd " + rstd.shape_str() + ", w " + w.shape_str());
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *px = x.ptr<T>(), *pw = w.ptr<T>();
        T *py = y.ptr<T>(), *pr = rstd.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < R; ++r) {
            const T* xr = px + r * D;
            double ss = 0;
            for (int64_t i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
            const T s = T(1.0 / std::sqrt(ss / D + eps));
            pr[r] = s;
            for (int64_t i = 0; i < D; ++i) py[r * D + i] = xr[i] * s * pw[i];
        }
    });
}

void CpuOps::rmsnorm_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd) {
    const int64_t D = w.numel(), R = x.numel() / D;
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *px = x.ptr<T>(), *pw = w.ptr<T>(), *pdy = dy.ptr<T>(), *pr = rstd.ptr<T>();
        if (!dx.empty()) {
            T* pdx = dx.ptr<T>();
            // dx = rstd * (w*dy - xhat * mean(w*dy*xhat)), xhat = x*rstd.
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < R; ++r) {
                const T *xr = px + r * D, *dyr = pdy + r * D;
                const double s = pr[r];
                double dot = 0;
                for (int64_t i = 0; i < D; ++i) dot += double(pw[i]) * dyr[i] * xr[i] * s;
                const double m = dot / D;
                for (int64_t i = 0; i < D; ++i) pdx[r * D + i] += T(s * (pw[i] * dyr[i] - xr[i] * s * m));
            }
        }
        if (!dw.empty()) {
            T* pdw = dw.ptr<T>();
            // dw[i] = sum_r dy * xhat, each column by one thread in row order.
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < D; ++i) {
                double acc = 0;
                for (int64_t r = 0; r < R; ++r) acc += double(pdy[r * D + i]) * px[r * D + i] * pr[r];
                pdw[i] += T(acc);
            }
        }
    });
}

}  // namespace moe
