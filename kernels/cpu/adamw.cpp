// AdamW in PyTorch's order: decoupled decay first, then the bias-corrected
// Adam update; the gradient is scaled (clipping) as it is read.
#include <cmath>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

void CpuOps::adamw_step(Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWParams& a) {
    check_same_shape("adamw_step", param, grad);
    check_same_shape("adamw_step", param, m);
    check_same_shape("adamw_step", param, v);
    const double c1 = 1 - std::pow(a.beta1, double(a.step)), c2 = 1 - std::pow(a.beta2, double(a.step));
    const double decay = 1 - a.lr * a.weight_decay, step_size = a.lr / c1, sqrt_c2 = std::sqrt(c2);
    dispatch_float(param, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T *p = param.ptr<T>(), *pm = m.ptr<T>(), *pv = v.ptr<T>();
        const T* g = grad.ptr<T>();
        const int64_t n = param.numel();
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            const T gi = T(g[i] * a.grad_scale);
            pm[i] = T(a.beta1) * pm[i] + T(1 - a.beta1) * gi;
            pv[i] = T(a.beta2) * pv[i] + T(1 - a.beta2) * gi * gi;
            p[i] = T(p[i] * decay - step_size * pm[i] / (std::sqrt(double(pv[i])) / sqrt_c2 + a.eps));
        }
    });
}

}  // namespace moe
