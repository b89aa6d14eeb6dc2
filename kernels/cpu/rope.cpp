// Rotary position embedding, rotate-half convention (Hugging Face Llama): the
// pair (i, i + hd/2) of a head at position t turns by t * theta^(-2i/hd).
#include <cmath>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

namespace {
// direction +1 rotates (forward), -1 rotates back (the transpose: backward).
void rotate(Tensor x, double theta, int direction) {
    check(x.ndim == 4 && x.dim(3) % 2 == 0, "rope", "x must be [B,T,heads,hd] with hd even, got " + x.shape_str());
    const int64_t B = x.dim(0), T = x.dim(1), heads = x.dim(2), hd = x.dim(3), half = hd / 2;
    dispatch_float(x, [&](auto tag) {
        using T_ = std::remove_pointer_t<decltype(tag)>;
        T_* p = x.ptr<T_>();
#pragma omp parallel for schedule(static)
        for (int64_t bt = 0; bt < B * T; ++bt) {
            const double pos = double(bt % T);
            for (int64_t i = 0; i < half; ++i) {
                const double angle = pos * std::pow(theta, -2.0 * double(i) / double(hd));
                const T_ c = T_(std::cos(angle)), s = T_(direction * std::sin(angle));
                for (int64_t h = 0; h < heads; ++h) {
                    T_* v = p + (bt * heads + h) * hd;
                    const T_ a = v[i], b = v[i + half];
                    v[i] = a * c - b * s;
                    v[i + half] = a * s + b * c;
                }
            }
        }
    });
}
}  // namespace

void CpuOps::rope_forward(Tensor x, double theta) { rotate(x, theta, +1); }

void CpuOps::rope_backward(Tensor dx, double theta) { rotate(dx, theta, -1); }

}  // namespace moe
