// Causal grouped-query attention, softmax(q k^T / sqrt(hd)) v. The forward
// keeps only the log-sum-exp of each query's scores; the backward recomputes
// the probabilities from it (as flash attention does) instead of storing T x T.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

namespace {

struct Dims {
    int64_t B, T, nh, nkv, hd;
    int64_t q_stride() const { return nh * hd; }   // between positions in q, out
    int64_t kv_stride() const { return nkv * hd; } // between positions in k, v
};

Dims dims_of(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
             const Tensor& lse) {
    check(q.ndim == 4 && k.ndim == 4 && v.ndim == 4, op, "q, k, v must be [B,T,heads,hd]");
    Dims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
    check(k.dim(0) == d.B && k.dim(1) == d.T && k.dim(3) == d.hd && v.numel() == k.numel() && d.nh % d.nkv == 0 &&
              out.numel() == q.numel() && lse.numel() == d.B * d.nh * d.T,
          op, "q " + q.shape_str() + ", k " + k.shape_str() + ", v " + v.shape_str() + ", lse " + lse.shape_str());
    return d;
}

template <class T> T dot(const T* a, const T* b, int64_t n) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

}  // namespace

void CpuOps::attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) {
    const Dims d = dims_of("attention_forward", q, k, v, out, lse);
    const double scale = 1.0 / std::sqrt(double(d.hd));
    dispatch_float(q, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *pq = q.ptr<T>(), *pk = k.ptr<T>(), *pv = v.ptr<T>();
        T *po = out.ptr<T>(), *pl = lse.ptr<T>();
        const int64_t group = d.nh / d.nkv;
#pragma omp parallel
        {
            std::vector<T> score(d.T);
#pragma omp for schedule(static)
            for (int64_t bh = 0; bh < d.B * d.nh; ++bh) {
                const int64_t b = bh / d.nh, h = bh % d.nh, kvh = h / group;
                for (int64_t t = 0; t < d.T; ++t) {
                    const T* qt = pq + (b * d.T + t) * d.q_stride() + h * d.hd;
                    T m = -std::numeric_limits<T>::infinity();
                    for (int64_t s = 0; s <= t; ++s) {
                        score[s] = T(scale) * dot(qt, pk + (b * d.T + s) * d.kv_stride() + kvh * d.hd, d.hd);
                        m = std::max(m, score[s]);
                    }
                    T sum = 0;
                    for (int64_t s = 0; s <= t; ++s) sum += score[s] = std::exp(score[s] - m);
                    T* ot = po + (b * d.T + t) * d.q_stride() + h * d.hd;
                    std::fill(ot, ot + d.hd, T(0));
                    for (int64_t s = 0; s <= t; ++s) {
                        const T p = score[s] / sum;
                        const T* vs = pv + (b * d.T + s) * d.kv_stride() + kvh * d.hd;
#pragma omp simd
                        for (int64_t i = 0; i < d.hd; ++i) ot[i] += p * vs[i];
                    }
                    pl[(b * d.nh + h) * d.T + t] = m + std::log(sum);
                }
            }
        }
    });
}

void CpuOps::attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                Tensor out, Tensor lse) {
    const Dims d = dims_of("attention_backward", q, k, v, out, lse);
    const double scale = 1.0 / std::sqrt(double(d.hd));
    dispatch_float(q, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *pq = q.ptr<T>(), *pk = k.ptr<T>(), *pv = v.ptr<T>(), *po = out.ptr<T>(), *pl = lse.ptr<T>();
        const T* pdo = dout.ptr<T>();
        T *pdq = dq.ptr<T>(), *pdk = dk.ptr<T>(), *pdv = dv.ptr<T>();
        const int64_t group = d.nh / d.nkv;
        // One thread per (batch, kv head): it owns dk, dv of that head, and dq
        // of the query heads that share it, so no two threads write one value.
#pragma omp parallel for schedule(static)
        for (int64_t bg = 0; bg < d.B * d.nkv; ++bg) {
            const int64_t b = bg / d.nkv, kvh = bg % d.nkv;
            for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
                for (int64_t t = 0; t < d.T; ++t) {
                    const int64_t qi = (b * d.T + t) * d.q_stride() + h * d.hd;
                    const T *qt = pq + qi, *dot_ = pdo + qi;
                    const T l = pl[(b * d.nh + h) * d.T + t];
                    const T delta = dot(dot_, po + qi, d.hd);  // rowsum(dO * O)
                    T* dqt = pdq + qi;
                    for (int64_t s = 0; s <= t; ++s) {
                        const int64_t ki = (b * d.T + s) * d.kv_stride() + kvh * d.hd;
                        const T p = std::exp(T(scale) * dot(qt, pk + ki, d.hd) - l);
                        const T ds = p * (dot(dot_, pv + ki, d.hd) - delta) * T(scale);
                        const T* ks = pk + ki;
                        T *dks = pdk + ki, *dvs = pdv + ki;
#pragma omp simd
                        for (int64_t i = 0; i < d.hd; ++i) {
                            dqt[i] += ds * ks[i];
                            dks[i] += ds * qt[i];
                            dvs[i] += p * dot_[i];
                        }
                    }
                }
            }
        }
    });
}

}  // namespace moe
