// The learned router (MODEL.md "Routers"): softmax, top-k selection with
// optional renormalisation, their backward with the Switch and z-loss terms,
// and the statistics those losses need. Rows are independent, so the forward
// and backward split rows over threads; router_stats sums rows serially.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

namespace {

// The router's tensors: logits/probs [N,E], lse [N], topk_idx/topk_w [N,k].
void check_router_shapes(const char* op, Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w) {
    const int64_t N = probs.dim(0), E = probs.dim(1), k = topk_idx.dim(1);
    if (probs.ndim != 2 || lse.numel() != N || topk_idx.ndim != 2 || topk_idx.dim(0) != N ||
        topk_w.ndim != 2 || topk_w.dim(0) != N || topk_w.dim(1) != k || k < 1 || k > E)
        throw std::invalid_argument(std::string(op) + ": expected probs [N,E], lse [N], topk_idx and topk_w [N,k] " +
                                    "with 1 <= k <= E; got probs " + probs.shape_str() + ", lse " + lse.shape_str() +
                                    ", topk_idx " + topk_idx.shape_str() + ", topk_w " + topk_w.shape_str());
}

// The value top-k ranks a probability by. NaN ranks lowest, so a row of NaN
// logits still names k distinct, valid experts and the NaN reaches the loss
// (where the trainer handles it) instead of becoming an invalid index.
template <class T> double rank_key(T p) { return std::isnan(p) ? -std::numeric_limits<double>::infinity() : double(p); }

// Top-k order: larger key first, ties to the lower expert index.
bool ranks_before(double key_a, int64_t a, double key_b, int64_t b) {
    return key_a > key_b || (key_a == key_b && a < b);
}

// idx[0..k) = the k largest of p[0..E), largest first. The order is strict, so
// each pick is the best expert ranking after the previous pick: no scratch.
template <class T> void select_top_k(int32_t* idx, const T* p, int64_t E, int64_t k) {
    for (int64_t j = 0; j < k; ++j) {
        const int64_t prev = j > 0 ? idx[j - 1] : -1;
        const double prev_key = j > 0 ? rank_key(p[prev]) : 0;
        int64_t best = -1;
        double best_key = 0;
        for (int64_t e = 0; e < E; ++e) {
            const double key = rank_key(p[e]);
            if (prev >= 0 && !ranks_before(prev_key, prev, key, e)) continue;  // already picked
            if (best < 0 || ranks_before(key, e, best_key, best)) best = e, best_key = key;
        }
        idx[j] = int32_t(best);
    }
}

}  // namespace

void CpuOps::router_forward(Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w, Tensor logits,
                            bool normalize) {
    check_router_shapes("router_forward", probs, lse, topk_idx, topk_w);
    if (logits.ndim != 2 || logits.dim(0) != probs.dim(0) || logits.dim(1) != probs.dim(1))
        throw std::invalid_argument("router_forward: logits " + logits.shape_str() + " and probs " +
                                    probs.shape_str() + " must have the same shape [N,E]");
    const int64_t N = probs.dim(0), E = probs.dim(1), k = topk_idx.dim(1);
    dispatch_float(logits, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* x = logits.ptr<T>();
        T* p = probs.ptr<T>();
        T* row_lse = lse.ptr<T>();
        int32_t* idx = topk_idx.ptr<int32_t>();
        T* w = topk_w.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            const T* xn = x + n * E;
            T* pn = p + n * E;
            double m = -std::numeric_limits<double>::infinity();
            for (int64_t e = 0; e < E; ++e) m = std::max(m, double(xn[e]));
            double s = 0;
            for (int64_t e = 0; e < E; ++e) s += std::exp(double(xn[e]) - m);
            const double l = m + std::log(s);
            row_lse[n] = T(l);
            for (int64_t e = 0; e < E; ++e) pn[e] = T(std::exp(double(xn[e]) - l));

            int32_t* in = idx + n * k;
            select_top_k(in, pn, E, k);
            double chosen = 0;
            for (int64_t j = 0; j < k; ++j) chosen += pn[in[j]];
            const double scale = normalize ? 1 / chosen : 1;
            for (int64_t j = 0; j < k; ++j) w[n * k + j] = T(pn[in[j]] * scale);
        }
    });
}

void CpuOps::router_backward(Tensor dlogits, Tensor dtopk_w, Tensor probs, Tensor lse, Tensor topk_idx,
                             Tensor topk_w, bool normalize, const std::vector<double>& aux_coef, double z_coef) {
    check_router_shapes("router_backward", probs, lse, topk_idx, topk_w);
    if (dlogits.empty()) return;
    const int64_t N = probs.dim(0), E = probs.dim(1), k = topk_idx.dim(1);
    if (dlogits.numel() != N * E || (!dtopk_w.empty() && dtopk_w.numel() != N * k))
        throw std::invalid_argument("router_backward: dlogits " + dlogits.shape_str() + " must have the shape of " +
                                    "probs " + probs.shape_str() + ", and dtopk_w " + dtopk_w.shape_str() +
                                    " that of topk_w " + topk_w.shape_str());
    if (int64_t(aux_coef.size()) != E)
        throw std::invalid_argument("router_backward: aux_coef has " + std::to_string(aux_coef.size()) +
                                    " entries, one per expert (" + std::to_string(E) + ") expected");
    const bool has_topk = !dtopk_w.empty();
    dispatch_float(probs, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* p = probs.ptr<T>();
        const T* row_lse = lse.ptr<T>();
        const int32_t* idx = topk_idx.ptr<int32_t>();
        const T* c = has_topk ? dtopk_w.ptr<T>() : nullptr;
        T* g = dlogits.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            const T* pn = p + n * E;
            const int32_t* in = idx + n * k;
            const T* cn = has_topk ? c + n * k : nullptr;
            T* gn = g + n * E;

            // dL/dp of a chosen expert j through the top-k term: c_j raw, and
            // (c_j - sum_i c_i w_i) / S through w_j = p_j / S, S = sum_i p_i.
            double S = 0, cw = 0;
            if (has_topk) {
                for (int64_t j = 0; j < k; ++j) S += pn[in[j]];
                for (int64_t j = 0; j < k; ++j) cw += cn[j] * (pn[in[j]] / S);
            }
            auto topk_dp = [&](int64_t j) { return normalize ? (cn[j] - cw) / S : double(cn[j]); };

            // Softmax chain: dlogit_e = p_e (dp_e - sum_f p_f dp_f), with
            // dp_e = aux_coef[e] + the top-k term; the z-loss adds 2 z lse p_e.
            double p_dot_dp = 0;
            for (int64_t e = 0; e < E; ++e) p_dot_dp += pn[e] * aux_coef[e];
            if (has_topk)
                for (int64_t j = 0; j < k; ++j) p_dot_dp += pn[in[j]] * topk_dp(j);
            const double z_term = 2 * z_coef * row_lse[n];
            for (int64_t e = 0; e < E; ++e) gn[e] += T(pn[e] * (aux_coef[e] - p_dot_dp + z_term));
            if (has_topk)
                for (int64_t j = 0; j < k; ++j) gn[in[j]] += T(pn[in[j]] * topk_dp(j));
        }
    });
}

void CpuOps::router_stats(Tensor stats, Tensor probs, Tensor lse) {
    const int64_t N = probs.dim(0), E = probs.dim(1);
    if (probs.ndim != 2 || lse.numel() != N || stats.dtype != DType::F64 || stats.numel() != E + 1)
        throw std::invalid_argument("router_stats: expected stats F64 [E+1], probs [N,E] and lse [N]; got stats " +
                                    std::string(dtype_name(stats.dtype)) + " " + stats.shape_str() + ", probs " +
                                    probs.shape_str() + " and lse " + lse.shape_str());
    double* out = stats.ptr<double>();
    std::fill_n(out, E + 1, 0.0);
    dispatch_float(probs, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* p = probs.ptr<T>();
        const T* l = lse.ptr<T>();
        for (int64_t n = 0; n < N; ++n) {
            for (int64_t e = 0; e < E; ++e) out[e] += p[n * E + e];
            out[E] += double(l[n]) * l[n];
        }
    });
}

}  // namespace moe
