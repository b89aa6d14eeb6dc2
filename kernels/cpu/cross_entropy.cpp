// Cross-entropy of logits against target ids, softmax statistics in double.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

namespace {
template <class T> void row_max_lse(const T* row, int64_t V, double& max, double& lse) {
    max = row[0];
    for (int64_t i = 1; i < V; ++i) max = std::max(max, double(row[i]));
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(row[i]) - max);
    lse = max + std::log(sum);
}
}  // namespace

void CpuOps::cross_entropy_forward(Tensor losses, Tensor logits, Tensor targets) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    check(losses.numel() == N && targets.numel() == N, "cross_entropy_forward",
          "losses " + losses.shape_str() + ", logits " + logits.shape_str() + ", targets " + targets.shape_str());
    const int32_t* tg = targets.ptr<int32_t>();
    dispatch_float(logits, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* pl = logits.ptr<T>();
        T* out = losses.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            double max, lse;
            row_max_lse(pl + n * V, V, max, lse);
            out[n] = T(lse - double(pl[n * V + tg[n]]));
        }
    });
}

void CpuOps::cross_entropy_backward(Tensor dlogits, Tensor logits, Tensor targets, double dloss) {
    const int64_t N = logits.dim(0), V = logits.dim(1);
    check_same_shape("cross_entropy_backward", dlogits, logits);
    const int32_t* tg = targets.ptr<int32_t>();
    dispatch_float(logits, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* pl = logits.ptr<T>();
        T* pd = dlogits.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            double max, lse;
            row_max_lse(pl + n * V, V, max, lse);  // read the row before it may be overwritten
            for (int64_t i = 0; i < V; ++i)
                pd[n * V + i] = T(dloss * (std::exp(double(pl[n * V + i]) - lse) - (i == tg[n] ? 1.0 : 0.0)));
        }
    });
}

}  // namespace moe
