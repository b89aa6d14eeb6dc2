// SiLU and the SwiGLU product silu(gate) * up, with their backward.
// silu(x) = x s(x) with s the sigmoid; silu'(x) = s(x) (1 + x (1 - s(x))).
#include <cmath>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

namespace {
template <class T> T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
template <class T> T silu_grad(T x, T s) { return s * (T(1) + x * (T(1) - s)); }
}  // namespace

void CpuOps::silu_forward(Tensor y, Tensor x) {
    check_same_shape("silu_forward", y, x);
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* px = x.ptr<T>();
        T* py = y.ptr<T>();
        const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (worth_threads(n))
        for (int64_t i = 0; i < n; ++i) py[i] = px[i] * sigmoid(px[i]);
    });
}

void CpuOps::silu_backward(Tensor dx, Tensor dy, Tensor x) {
    if (dx.empty()) return;
    check_same_shape("silu_backward", dx, x);
    check_same_shape("silu_backward", dy, x);
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *px = x.ptr<T>(), *pdy = dy.ptr<T>();
        T* pdx = dx.ptr<T>();
        const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (worth_threads(n))
        for (int64_t i = 0; i < n; ++i) pdx[i] += pdy[i] * silu_grad(px[i], sigmoid(px[i]));
    });
}

void CpuOps::swiglu_forward(Tensor out, Tensor gate, Tensor up) {
    check_same_shape("swiglu_forward", out, gate);
    check_same_shape("swiglu_forward", out, up);
    dispatch_float(out, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *g = gate.ptr<T>(), *u = up.ptr<T>();
        T* o = out.ptr<T>();
        const int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (worth_threads(n))
        for (int64_t i = 0; i < n; ++i) o[i] = g[i] * sigmoid(g[i]) * u[i];
    });
}

void CpuOps::swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    check_same_shape("swiglu_backward", dout, gate);
    check_same_shape("swiglu_backward", dout, up);
    if (!dgate.empty()) check_same_shape("swiglu_backward", dgate, gate);
    if (!dup.empty()) check_same_shape("swiglu_backward", dup, up);
    dispatch_float(dout, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *g = gate.ptr<T>(), *u = up.ptr<T>(), *d = dout.ptr<T>();
        T* dg = dgate.empty() ? nullptr : dgate.ptr<T>();
        T* du = dup.empty() ? nullptr : dup.ptr<T>();
        const int64_t n = dout.numel();
#pragma omp parallel for schedule(static) if (worth_threads(n))
        for (int64_t i = 0; i < n; ++i) {
            const T s = sigmoid(g[i]);
            if (dg) dg[i] = d[i] * u[i] * silu_grad(g[i], s);
            if (du) du[i] = d[i] * g[i] * s;
        }
    });
}

}  // namespace moe
