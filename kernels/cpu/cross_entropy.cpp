// Cross-entropy of logits [N,V] against target ids, softmax statistics in
// double; the gradient, when wanted, in the same pass over each row. A target
// outside [0, V) is a data error (MODEL.md), never ignored.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

namespace {

void check_inputs(const char* op, const Tensor& logits, const Tensor& targets) {
    check(logits.ndim == 2 && targets.numel() == logits.dim(0), op,
          "expected logits [N,V] and targets [N]; got " + logits.shape_str() + " and " + targets.shape_str());
    const int64_t V = logits.dim(1);
    const int32_t* tg = targets.ptr<int32_t>();
    for (int64_t n = 0; n < targets.numel(); ++n)
        if (tg[n] < 0 || tg[n] >= V)
            throw std::out_of_range(std::string(op) + ": target[" + std::to_string(n) + "] = " +
                                    std::to_string(tg[n]) + " is outside the vocabulary [0, " + std::to_string(V) +
                                    "); the data does not match the model's vocab_size");
}

template <class T> double row_max(const T* row, int64_t V) {
    return double(*std::max_element(row, row + V));
}

}  // namespace

void CpuOps::cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dloss) {
    const char* op = "cross_entropy";
    check_inputs(op, logits, targets);
    check(losses.numel() == logits.dim(0), op, "losses " + losses.shape_str() + " for logits " + logits.shape_str());
    if (!dlogits.empty()) check_same_shape(op, dlogits, logits);
    const int64_t N = logits.dim(0), V = logits.dim(1);
    const int32_t* tg = targets.ptr<int32_t>();
    dispatch_float(logits, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* pl = logits.ptr<T>();
        T* out = losses.ptr<T>();
        T* pd = dlogits.empty() ? nullptr : dlogits.ptr<T>();
#pragma omp parallel for schedule(static) if (worth_threads(N * V))
        for (int64_t n = 0; n < N; ++n) {
            const T* row = pl + n * V;
            const double max = row_max(row, V);
            double sum = 0;
            for (int64_t i = 0; i < V; ++i) sum += std::exp(double(row[i]) - max);
            const double row_lse = max + std::log(sum);
            out[n] = T(row_lse - double(row[tg[n]]));
            if (!pd) continue;
            T* grad = pd + n * V;  // may be row itself: each element is read before it is written
            for (int64_t i = 0; i < V; ++i)
                grad[i] = T(dloss * (std::exp(double(row[i]) - row_lse) - (i == tg[n] ? 1 : 0)));
        }
    });
}

}  // namespace moe
