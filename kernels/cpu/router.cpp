// The learned router (MODEL.md "Routers", docs/MODEL-OPTIONS.md "Router
// options"): softmax or sigmoid scores, top-k selection by score plus bias
// within the token's best groups, optional renormalisation, their backward
// with the balancing and z-loss terms, and the statistics those losses need.
// Rows are independent, so the forward and backward split rows over threads;
// router_stats sums rows serially.
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

// The value top-k ranks a score by. NaN ranks lowest, so a row of NaN logits
// still names k distinct, valid experts and the NaN reaches the loss (where
// the trainer handles it) instead of becoming an invalid index.
template <class T> double rank_key(T p) { return std::isnan(p) ? -std::numeric_limits<double>::infinity() : double(p); }

// Top-k order: an expert of the token's groups before one outside them, then
// the larger key, then the lower expert index.
bool ranks_before(bool allowed_a, double key_a, int64_t a, bool allowed_b, double key_b, int64_t b) {
    if (allowed_a != allowed_b) return allowed_a;
    return key_a > key_b || (key_a == key_b && a < b);
}

// allowed[e] = whether expert e is in one of the `limit` groups (of E / G
// consecutive experts) whose two largest keys sum highest (in T, as the GPU
// adds them), ties to the lower group.
template <class T> void choose_groups(const double* key, int64_t E, int G, int limit, char* allowed) {
    const int64_t size = E / G;
    std::vector<double> score(size_t(G), 0.0);
    for (int g = 0; g < G; ++g) {
        double first = -std::numeric_limits<double>::infinity(), second = first;
        for (int64_t e = g * size; e < (g + 1) * size; ++e) {
            if (key[e] > first) second = first, first = key[e];
            else if (key[e] > second) second = key[e];
        }
        score[size_t(g)] = size > 1 ? double(T(first) + T(second)) : first;
    }
    std::fill_n(allowed, E, 0);
    std::vector<char> taken(size_t(G), 0);
    for (int round = 0; round < limit; ++round) {
        int best = -1;
        for (int g = 0; g < G; ++g)
            if (!taken[size_t(g)] && (best < 0 || score[size_t(g)] > score[size_t(best)])) best = g;
        taken[size_t(best)] = 1;
        std::fill_n(allowed + best * size, size, 1);
    }
}

// idx[0..k) = the k experts ranking first by (allowed, key, index). The order
// is strict, so each pick is the best expert ranking after the previous pick.
void select_top_k(int32_t* idx, const double* key, const char* allowed, int64_t E, int64_t k) {
    for (int64_t j = 0; j < k; ++j) {
        const int64_t prev = j > 0 ? idx[j - 1] : -1;
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e) {
            if (prev >= 0 && !ranks_before(allowed[prev], key[prev], prev, allowed[e], key[e], e)) continue;
            if (best < 0 || ranks_before(allowed[e], key[e], e, allowed[best], key[best], best)) best = e;
        }
        idx[j] = int32_t(best);
    }
}

// The bias is in the scores' dtype (the statistics': F32, or F64 in checks).
void check_scoring(const char* op, const RouterScoring& sc, DType dtype, int64_t E, int64_t k) {
    if (!sc.bias.empty() && (sc.bias.numel() != E || sc.bias.dtype != dtype))
        throw std::invalid_argument(std::string(op) + ": bias must be " + dtype_name(dtype) + " [E] (" +
                                    std::to_string(E) + "), got " + dtype_name(sc.bias.dtype) + " " +
                                    sc.bias.shape_str());
    if (sc.groups < 1 || E % sc.groups != 0 || sc.group_limit < 1 || sc.group_limit > sc.groups ||
        k > sc.group_limit * (E / sc.groups))
        throw std::invalid_argument(std::string(op) + ": " + std::to_string(sc.groups) + " groups with a limit of " +
                                    std::to_string(sc.group_limit) + " cannot hold top-" + std::to_string(k) +
                                    " of " + std::to_string(E) + " experts");
}

}  // namespace

void CpuOps::router_forward(Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w, Tensor logits,
                            const RouterScoring& scoring) {
    check_router_shapes("router_forward", probs, lse, topk_idx, topk_w);
    if (logits.ndim != 2 || logits.dim(0) != probs.dim(0) || logits.dim(1) != probs.dim(1))
        throw std::invalid_argument("router_forward: logits " + logits.shape_str() + " and probs " +
                                    probs.shape_str() + " must have the same shape [N,E]");
    const int64_t N = probs.dim(0), E = probs.dim(1), k = topk_idx.dim(1);
    check_scoring("router_forward", scoring, probs.dtype, E, k);
    dispatch_float(logits, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* bias = scoring.bias.empty() ? nullptr : scoring.bias.ptr<T>();
        const T* x = logits.ptr<T>();
        T* p = probs.ptr<T>();
        T* row_lse = lse.ptr<T>();
        int32_t* idx = topk_idx.ptr<int32_t>();
        T* w = topk_w.ptr<T>();
#pragma omp parallel
        {
            std::vector<double> key(static_cast<size_t>(E));
            std::vector<char> allowed(static_cast<size_t>(E), 1);
#pragma omp for schedule(static)
            for (int64_t n = 0; n < N; ++n) {
                const T* xn = x + n * E;
                T* pn = p + n * E;
                double m = -std::numeric_limits<double>::infinity();
                for (int64_t e = 0; e < E; ++e) m = std::max(m, double(xn[e]));
                double s = 0;
                for (int64_t e = 0; e < E; ++e) s += std::exp(double(xn[e]) - m);
                const double l = m + std::log(s);
                if (scoring.sigmoid) {
                    double sum = 0;
                    for (int64_t e = 0; e < E; ++e) {
                        pn[e] = T(1 / (1 + std::exp(-double(xn[e]))));
                        sum += pn[e];
                    }
                    row_lse[n] = T(std::log(sum));  // what the scores are normalised by
                } else {
                    row_lse[n] = T(l);
                    for (int64_t e = 0; e < E; ++e) pn[e] = T(std::exp(double(xn[e]) - l));
                }

                // Keys in T, as the GPU adds them.
                for (int64_t e = 0; e < E; ++e) key[size_t(e)] = rank_key(bias ? T(pn[e] + bias[e]) : pn[e]);
                if (scoring.groups > 1)
                    choose_groups<T>(key.data(), E, scoring.groups, scoring.group_limit, allowed.data());
                int32_t* in = idx + n * k;
                select_top_k(in, key.data(), allowed.data(), E, k);
                double chosen = 0;
                for (int64_t j = 0; j < k; ++j) chosen += pn[in[j]];
                const double scale = scoring.normalize ? 1 / chosen : 1;
                for (int64_t j = 0; j < k; ++j) w[n * k + j] = T(pn[in[j]] * scale);
            }
        }
    });
}

void CpuOps::router_backward(Tensor dlogits, Tensor dtopk_w, Tensor probs, Tensor lse, Tensor topk_idx,
                             Tensor topk_w, const RouterScoring& scoring, const std::vector<double>& aux_coef,
                             double z_coef) {
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
    if (scoring.sigmoid && z_coef != 0)
        throw std::invalid_argument("router_backward: the z-loss is defined for softmax scores only");
    const bool has_topk = !dtopk_w.empty(), normalize = scoring.normalize;
    dispatch_float(probs, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* p = probs.ptr<T>();
        const T* row_lse = lse.ptr<T>();
        const int32_t* idx = topk_idx.ptr<int32_t>();
        const T* c = has_topk ? dtopk_w.ptr<T>() : nullptr;
        T* g = dlogits.ptr<T>();
#pragma omp parallel
        {
            std::vector<double> ds(static_cast<size_t>(E));  // sigmoid: dL/ds of one token
#pragma omp for schedule(static)
            for (int64_t n = 0; n < N; ++n) {
                const T* pn = p + n * E;
                const int32_t* in = idx + n * k;
                const T* cn = has_topk ? c + n * k : nullptr;
                T* gn = g + n * E;

                // dL/ds of a chosen expert j through the top-k term: c_j raw, and
                // (c_j - sum_i c_i w_i) / S through w_j = s_j / S, S = sum_i s_i.
                double S = 0, cw = 0;
                if (has_topk) {
                    for (int64_t j = 0; j < k; ++j) S += pn[in[j]];
                    for (int64_t j = 0; j < k; ++j) cw += cn[j] * (pn[in[j]] / S);
                }
                auto topk_dp = [&](int64_t j) { return normalize ? (cn[j] - cw) / S : double(cn[j]); };

                if (scoring.sigmoid) {
                    // q = s / R, R = sum_f s_f: d(sum_e a_e q_e)/ds_f = (a_f - sum_e a_e q_e) / R;
                    // through the sigmoid, dlogit = s (1 - s) dL/ds.
                    double R = 0, aq = 0;
                    for (int64_t e = 0; e < E; ++e) R += pn[e];
                    for (int64_t e = 0; e < E; ++e) aq += aux_coef[e] * (pn[e] / R);
                    for (int64_t e = 0; e < E; ++e) ds[size_t(e)] = (aux_coef[e] - aq) / R;
                    if (has_topk)
                        for (int64_t j = 0; j < k; ++j) ds[size_t(in[j])] += topk_dp(j);
                    for (int64_t e = 0; e < E; ++e) gn[e] += T(double(pn[e]) * (1 - double(pn[e])) * ds[size_t(e)]);
                    continue;
                }
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
        }
    });
}

void CpuOps::router_stats(Tensor stats, Tensor probs, Tensor lse, const RouterScoring& scoring) {
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
            // Softmax rows sum to 1; sigmoid scores are divided by their sum, exp(lse).
            const double scale = scoring.sigmoid ? std::exp(-double(l[n])) : 1.0;
            for (int64_t e = 0; e < E; ++e) out[e] += scoring.sigmoid ? p[n * E + e] * scale : double(p[n * E + e]);
            out[E] += double(l[n]) * l[n];
        }
    });
}

}  // namespace moe
