// Causal grouped-query attention, softmax(q k^T / sqrt(hd)) v; query head j
// reads kv head j / (nh/nkv). The forward keeps only the log-sum-exp of each
// query's scores; the backward recomputes the probabilities from it (as flash
// attention does) instead of storing T x T of them:
//   P = exp(S - lse),  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
//   dQ = dS K / sqrt(hd),  dK = dS^T Q / sqrt(hd),  dV = P^T dO.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/attention_dims.h"
#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

namespace {

template <class T> T dot(const T* a, const T* b, int64_t n) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

template <class T> void axpy(T* y, T alpha, const T* x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template <class T> T* data_or_null(const Tensor& t) { return t.empty() ? nullptr : t.ptr<T>(); }

}  // namespace

void CpuOps::attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
    const AttentionDims d = attention_dims("attention_forward", q, k, v, out, lse);
    dispatch_float(q, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T scale = T(1.0 / std::sqrt(double(d.hd)));
        const T *pq = q.ptr<T>(), *pk = k.ptr<T>(), *pv = v.ptr<T>();
        T *po = out.ptr<T>(), *pl = lse.ptr<T>();
#pragma omp parallel if (worth_threads(d.B * d.nh * d.T * d.T * d.hd))
        {
            std::vector<T> score(d.T);
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < d.B * d.nh; ++bh) {
                const int64_t b = bh / d.nh, h = bh % d.nh, kvh = h / d.group();
                for (int64_t t = 0; t < d.T; ++t) {
                    const T* qt = pq + d.q_at(b, t, h);
                    T max = -std::numeric_limits<T>::infinity();
                    for (int64_t s = 0; s <= t; ++s) {
                        score[s] = scale * dot(qt, pk + d.kv_at(b, s, kvh), d.hd);
                        max = std::max(max, score[s]);
                    }
                    T sum = 0;
                    for (int64_t s = 0; s <= t; ++s) sum += score[s] = std::exp(score[s] - max);
                    T* ot = po + d.q_at(b, t, h);
                    std::fill_n(ot, d.hd, T(0));
                    for (int64_t s = 0; s <= t; ++s) axpy(ot, score[s] / sum, pv + d.kv_at(b, s, kvh), d.hd);
                    pl[d.lse_at(b, h, t)] = max + std::log(sum);
                }
            }
        }
    });
}

void CpuOps::attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                Tensor out, Tensor lse, Write write) {
    const AttentionDims d = attention_dims("attention_backward", q, k, v, out, lse);
    check(dout.numel() == q.numel() && (dq.empty() || dq.numel() == q.numel()) &&
              (dk.empty() || dk.numel() == k.numel()) && (dv.empty() || dv.numel() == v.numel()),
          "attention_backward",
          "dout " + dout.shape_str() + ", dq " + dq.shape_str() + ", dk " + dk.shape_str() + ", dv " +
              dv.shape_str() + " do not match q " + q.shape_str() + " and k, v " + k.shape_str());
    if (write == Write::overwrite)
        for (Tensor g : {dq, dk, dv})
            if (!g.empty()) zero(g);
    dispatch_float(q, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T scale = T(1.0 / std::sqrt(double(d.hd)));
        const T *pq = q.ptr<T>(), *pk = k.ptr<T>(), *pv = v.ptr<T>(), *po = out.ptr<T>(), *pl = lse.ptr<T>();
        const T* pdo = dout.ptr<T>();
        T *pdq = data_or_null<T>(dq), *pdk = data_or_null<T>(dk), *pdv = data_or_null<T>(dv);
        // One thread per (batch, kv head): it owns dk, dv of that head and dq
        // of the query heads that share it, so no two threads write one value.
#pragma omp parallel for schedule(static) if (worth_threads(d.B * d.nh * d.T * d.T * d.hd))
        for (int64_t bg = 0; bg < d.B * d.nkv; ++bg) {
            const int64_t b = bg / d.nkv, kvh = bg % d.nkv;
            for (int64_t h = kvh * d.group(); h < (kvh + 1) * d.group(); ++h)
                for (int64_t t = 0; t < d.T; ++t) {
                    const int64_t qi = d.q_at(b, t, h);
                    const T *qt = pq + qi, *dot_t = pdo + qi;
                    const T l = pl[d.lse_at(b, h, t)];
                    const T delta = dot(dot_t, po + qi, d.hd);  // rowsum(dO * O)
                    for (int64_t s = 0; s <= t; ++s) {
                        const int64_t ki = d.kv_at(b, s, kvh);
                        const T p = std::exp(scale * dot(qt, pk + ki, d.hd) - l);
                        const T ds = p * (dot(dot_t, pv + ki, d.hd) - delta) * scale;
                        if (pdq) axpy(pdq + qi, ds, pk + ki, d.hd);
                        if (pdk) axpy(pdk + ki, ds, qt, d.hd);
                        if (pdv) axpy(pdv + ki, p, dot_t, d.hd);
                    }
                }
        }
    });
}

}  // namespace moe
