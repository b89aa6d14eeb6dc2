// Causal grouped-query attention, softmax(q k^T / sqrt(hd)) v; query head j
// reads kv head j / (nh/nkv). The forward keeps only the log-sum-exp of each
// query's scores; the backward recomputes the probabilities from it (as flash
// attention does) instead of storing T x T of them:
//   P = exp(S - lse),  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),
//   dQ = dS K / sqrt(hd),  dK = dS^T Q / sqrt(hd),  dV = P^T dO.
// attention_decode runs the forward's per-query loop (attend) for new queries
// over a KV cache, so a cached position gives the full forward's bits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>
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

template <class T> T* data_or_null(const Heads& h) { return h.empty() ? nullptr : h.ptr<T>(); }

// Calls f(offset) for the first element of each head of view h, in order.
template <class F> void for_each_head(const Heads& h, F&& f) {
    for (int64_t b = 0; b < h.t.dim(0); ++b)
        for (int64_t t = 0; t < h.t.dim(1); ++t)
            for (int64_t i = 0; i < h.count; ++i) f(h.at(b, t, i));
}

void zero_heads(const Heads& h) {
    const size_t bytes = size_t(h.hd()) * dtype_size(h.t.dtype);
    char* base = static_cast<char*>(h.base());
    for_each_head(h, [&](int64_t at) { std::memset(base + size_t(at) * dtype_size(h.t.dtype), 0, bytes); });
}

// dst's heads = src (whole, [B,T,count,hd]), or += src.
void put_heads(const Heads& dst, const Tensor& src, Write write) {
    dispatch_float(src, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* to = dst.ptr<T>();
        const T* from = src.ptr<T>();
        const int64_t hd = dst.hd();
        for_each_head(dst, [&](int64_t at) {
            for (int64_t e = 0; e < hd; ++e) to[at + e] = write == Write::add ? to[at + e] + from[e] : from[e];
            from += hd;
        });
    });
}

// One query's output over keys and values 0..last (rows `stride` apart from k
// and v): out = softmax(scale q k^T) v. Returns the log-sum-exp; score holds
// last + 1 values of scratch.
template <class T>
T attend(T* out, const T* q, const T* k, const T* v, int64_t stride, int64_t last, int64_t hd, T scale, T* score) {
    T max = -std::numeric_limits<T>::infinity();
    for (int64_t s = 0; s <= last; ++s) {
        score[s] = scale * dot(q, k + s * stride, hd);
        max = std::max(max, score[s]);
    }
    T sum = 0;
    for (int64_t s = 0; s <= last; ++s) sum += score[s] = std::exp(score[s] - max);
    std::fill_n(out, hd, T(0));
    for (int64_t s = 0; s <= last; ++s) axpy(out, score[s] / sum, v + s * stride, hd);
    return max + std::log(sum);
}

}  // namespace

void CpuOps::attention_forward(Tensor out, Tensor lse, Heads q, Heads k, Heads v) {
    const AttentionDims d = attention_dims("attention_forward", q, k, v, out, lse);
    dispatch_float(q.t, [&](auto tag) {
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
                const int64_t at = d.kv_at(b, 0, kvh), stride = d.kv_row * d.hd;
                for (int64_t t = 0; t < d.T; ++t)
                    pl[d.lse_at(b, h, t)] = attend(po + d.out_at(b, t, h), pq + d.q_at(b, t, h), pk + at, pv + at,
                                                   stride, t, d.hd, scale, score.data());
            }
        }
    });
}

void CpuOps::attention_decode(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, int64_t first_position) {
    const DecodeDims d = decode_dims("attention_decode", out, q, k_cache, v_cache, first_position);
    check(out.dtype == q.dtype && k_cache.dtype == q.dtype && v_cache.dtype == q.dtype, "attention_decode",
          "q, k, v and out must share one dtype");
    dispatch_float(q, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T scale = T(1.0 / std::sqrt(double(d.hd)));
        const T *pq = q.ptr<T>(), *pk = k_cache.ptr<T>(), *pv = v_cache.ptr<T>();
        T* po = out.ptr<T>();
        const int64_t stride = d.nkv * d.hd;
#pragma omp parallel if (worth_threads(d.n * d.nh * (d.first + d.n) * d.hd))
        {
            std::vector<T> score(size_t(d.first + d.n));
#pragma omp for schedule(static)
            for (int64_t ih = 0; ih < d.n * d.nh; ++ih) {
                const int64_t i = ih / d.nh, h = ih % d.nh, kvh = h / d.group();
                attend(po + d.q_at(i, h), pq + d.q_at(i, h), pk + d.kv_at(0, kvh), pv + d.kv_at(0, kvh), stride,
                       d.first + i, d.hd, scale, score.data());
            }
        }
    });
}

void CpuOps::attention_backward(Heads dq, Heads dk, Heads dv, Tensor dout, Heads q, Heads k, Heads v,
                                Tensor out, Tensor lse, Write write, std::optional<double> rope_theta) {
    if (rope_theta) {
        // The attention's gradients of q and k written apart (whole tensors),
        // turned back, then put where asked as write says.
        std::vector<unsigned char> dq_bytes, dk_bytes;
        const auto apart = [](const Heads& g, std::vector<unsigned char>& bytes) {
            if (g.empty()) return Tensor{};
            Tensor whole(nullptr, g.t.dtype, {g.t.dim(0), g.t.dim(1), g.count, g.hd()});
            bytes.resize(whole.bytes());
            whole.data = bytes.data();
            return whole;
        };
        const Tensor gq = apart(dq, dq_bytes), gk = apart(dk, dk_bytes);
        if (!dv.empty()) attention_backward({}, {}, dv, dout, q, k, v, out, lse, write, std::nullopt);
        attention_backward(gq, gk, {}, dout, q, k, v, out, lse, Write::overwrite, std::nullopt);
        for (const auto& [grad, turned] : {std::pair{dq, gq}, std::pair{dk, gk}}) {
            if (grad.empty()) continue;
            rope_backward(turned, *rope_theta);
            put_heads(grad, turned, write);
        }
        return;
    }
    const AttentionDims d = attention_dims("attention_backward", q, k, v, out, lse);
    const AttentionGradRows g = attention_grad_rows("attention_backward", d, dq, dk, dv, dout);
    if (write == Write::overwrite)
        for (const Heads& grad : {dq, dk, dv})
            if (!grad.empty()) zero_heads(grad);
    dispatch_float(q.t, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T scale = T(1.0 / std::sqrt(double(d.hd)));
        const T *pq = q.ptr<T>(), *pk = k.ptr<T>(), *pv = v.ptr<T>(), *po = out.ptr<T>(), *pl = lse.ptr<T>();
        const T* pdo = dout.ptr<T>();
        T *pdq = data_or_null<T>(dq), *pdk = data_or_null<T>(dk), *pdv = data_or_null<T>(dv);
        const auto dq_at = [&](int64_t b, int64_t t, int64_t h) { return ((b * d.T + t) * g.dq + h) * d.hd; };
        const auto dkv_at = [&](int64_t b, int64_t t, int64_t h) { return ((b * d.T + t) * g.dkv + h) * d.hd; };
        // One thread per (batch, kv head): it owns dk, dv of that head and dq
        // of the query heads that share it, so no two threads write one value.
#pragma omp parallel for schedule(static) if (worth_threads(d.B * d.nh * d.T * d.T * d.hd))
        for (int64_t bg = 0; bg < d.B * d.nkv; ++bg) {
            const int64_t b = bg / d.nkv, kvh = bg % d.nkv;
            for (int64_t h = kvh * d.group(); h < (kvh + 1) * d.group(); ++h)
                for (int64_t t = 0; t < d.T; ++t) {
                    const T *qt = pq + d.q_at(b, t, h), *dot_t = pdo + d.out_at(b, t, h);
                    const T l = pl[d.lse_at(b, h, t)];
                    const T delta = dot(dot_t, po + d.out_at(b, t, h), d.hd);  // rowsum(dO * O)
                    for (int64_t s = 0; s <= t; ++s) {
                        const int64_t ki = d.kv_at(b, s, kvh);
                        const T p = std::exp(scale * dot(qt, pk + ki, d.hd) - l);
                        const T ds = p * (dot(dot_t, pv + ki, d.hd) - delta) * scale;
                        if (pdq) axpy(pdq + dq_at(b, t, h), ds, pk + ki, d.hd);
                        if (pdk) axpy(pdk + dkv_at(b, s, kvh), ds, qt, d.hd);
                        if (pdv) axpy(pdv + dkv_at(b, s, kvh), p, dot_t, d.hd);
                    }
                }
        }
    });
}

}  // namespace moe
