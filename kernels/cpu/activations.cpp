// SiLU and the SwiGLU product silu(gate) * up of a row [gate | up], with
// their backward.
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

namespace {
// Rows R and width I of out [R,I] for gate_up [R,2I].
int64_t swiglu_rows(const char* op, const Tensor& out, const Tensor& gate_up) {
    const int64_t I = out.row_size();
    check(out.ndim == 2 && gate_up.ndim == 2 && gate_up.dim(0) == out.dim(0) && gate_up.dim(1) == 2 * I, op,
          "expected out [R,I] and gate_up [R,2I]; got out " + out.shape_str() + ", gate_up " + gate_up.shape_str());
    return out.dim(0);
}
}  // namespace

void CpuOps::swiglu_forward(Tensor out, Tensor gate_up) {
    const int64_t R = swiglu_rows("swiglu_forward", out, gate_up), I = out.row_size();
    dispatch_float(out, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* gu = gate_up.ptr<T>();
        T* o = out.ptr<T>();
#pragma omp parallel for schedule(static) if (worth_threads(R * I))
        for (int64_t r = 0; r < R; ++r)
            for (int64_t i = 0; i < I; ++i) {
                const T g = gu[r * 2 * I + i], u = gu[r * 2 * I + I + i];
                o[r * I + i] = g * sigmoid(g) * u;
            }
    });
}

void CpuOps::swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) {
    const int64_t R = swiglu_rows("swiglu_backward", dout, gate_up), I = dout.row_size();
    check_same_shape("swiglu_backward", dgate_up, gate_up);
    dispatch_float(dout, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *gu = gate_up.ptr<T>(), *d = dout.ptr<T>();
        T* dgu = dgate_up.ptr<T>();
#pragma omp parallel for schedule(static) if (worth_threads(R * I))
        for (int64_t r = 0; r < R; ++r)
            for (int64_t i = 0; i < I; ++i) {
                const T g = gu[r * 2 * I + i], u = gu[r * 2 * I + I + i], dy = d[r * I + i], s = sigmoid(g);
                dgu[r * 2 * I + i] = dy * u * silu_grad(g, s);
                dgu[r * 2 * I + I + i] = dy * g * s;
            }
    });
}

}  // namespace moe
