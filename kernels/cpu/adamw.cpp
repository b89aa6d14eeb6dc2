// AdamW in PyTorch's order (torch.optim.AdamW): decoupled decay first,
//   param *= 1 - lr * wd,
// then the bias-corrected Adam update with g = grad * grad_scale (clipping):
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
//   param -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps).
#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

void CpuOps::adamw_step(const std::vector<AdamWTensor>& tensors, const AdamWParams& a) {
    check(a.step >= 1, "adamw_step", "step is 1-based, got " + std::to_string(a.step));
    for (const AdamWTensor& t : tensors) {  // all before any is updated
        check_same_shape("adamw_step", t.param, t.grad);
        check_same_shape("adamw_step", t.param, t.m);
        check_same_shape("adamw_step", t.param, t.v);
    }
    const double c1 = 1 - std::pow(a.beta1, double(a.step)), c2 = 1 - std::pow(a.beta2, double(a.step));
    const double step_size = a.lr / c1, sqrt_c2 = std::sqrt(c2);
    for (const AdamWTensor& t : tensors) {
        const double decay = 1 - a.lr * t.weight_decay;
        dispatch_float(t.param, [&](auto tag) {
            using T = std::remove_pointer_t<decltype(tag)>;
            T *p = t.param.ptr<T>(), *pm = t.m.ptr<T>(), *pv = t.v.ptr<T>();
            const T* g = t.grad.ptr<T>();
            const int64_t n = t.param.numel();
#pragma omp parallel for simd schedule(static) if (worth_threads(n))
            for (int64_t i = 0; i < n; ++i) {
                const double gi = double(g[i]) * a.grad_scale;
                const double mi = a.beta1 * double(pm[i]) + (1 - a.beta1) * gi;
                const double vi = a.beta2 * double(pv[i]) + (1 - a.beta2) * gi * gi;
                pm[i] = T(mi);
                pv[i] = T(vi);
                p[i] = T(double(p[i]) * decay - step_size * mi / (std::sqrt(vi) / sqrt_c2 + a.eps));
            }
        });
        if (!t.work.empty() && t.work.data != t.param.data) copy(t.work, t.param);
    }
}

}  // namespace moe
