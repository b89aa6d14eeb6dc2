// Rotary position embedding, rotate-half convention (Hugging Face Llama): the
// pair (i, i + hd/2) of a head at position p turns by p * theta^(-2i/hd), where
// row t of x is at position first_position + t; x may be some heads of each
// position's row (Heads).
// The backward turns by the opposite angle (the transpose of a rotation).
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

namespace {

// direction +1 rotates (forward), -1 rotates back (backward).
void rotate(const char* op, Heads x, double theta, int64_t first_position, int direction) {
    check(x.t.ndim == 4 && x.hd() % 2 == 0, op, "x must be [B,T,heads,hd] with hd even, got " + x.str());
    const int64_t B = x.t.dim(0), T = x.t.dim(1), heads = x.count, hd = x.hd(), half = hd / 2;
    dispatch_float(x.t, [&](auto tag) {
        using F = std::remove_pointer_t<decltype(tag)>;
        F* p = x.ptr<F>();
#pragma omp parallel if (worth_threads(B * T * heads * hd))
        {
            std::vector<F> cos_t(half), sin_t(half);
            // One position per iteration: its angles are computed once for every batch row and head.
#pragma omp for schedule(static)
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t i = 0; i < half; ++i) {
                    const double angle = double(first_position + t) * std::pow(theta, -2.0 * double(i) / double(hd));
                    cos_t[i] = F(std::cos(angle));
                    sin_t[i] = F(direction * std::sin(angle));
                }
                for (int64_t b = 0; b < B; ++b)
                    for (int64_t h = 0; h < heads; ++h) {
                        F* a = p + x.at(b, t, h);
                        F* c = a + half;
#pragma omp simd
                        for (int64_t i = 0; i < half; ++i) {
                            const F ai = a[i], ci = c[i];
                            a[i] = ai * cos_t[i] - ci * sin_t[i];
                            c[i] = ai * sin_t[i] + ci * cos_t[i];
                        }
                    }
            }
        }
    });
}

}  // namespace

void CpuOps::rope_forward(Heads x, double theta, int64_t first_position) {
    rotate("rope_forward", x, theta, first_position, +1);
}

void CpuOps::rope_backward(Tensor dx, double theta) { rotate("rope_backward", dx, theta, 0, -1); }

}  // namespace moe
