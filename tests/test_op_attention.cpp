// Causal GQA attention on the CPU: the forward (output and log-sum-exp)
// against a naive softmax loop, the backward against finite differences in
// double, q, k, v and their gradients in the stacked projection's rows as
// whole tensors, results that do not depend on the thread count, and
// attention over a KV cache (attention_decode) giving the forward's rows bit
// for bit.
#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/parallel.h"
#include "tests/attention_shape.h"
#include "tests/gradcheck.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

struct Reference {
    std::vector<double> out, lse;
};

// softmax over s <= t of q_t . k_s / sqrt(hd), times v; query head h reads kv head h / (nh/nkv).
Reference naive_attention(const Shape& d, const std::vector<double>& q, const std::vector<double>& k,
                          const std::vector<double>& v) {
    Reference r{std::vector<double>(d.q_size()), std::vector<double>(d.lse_size())};
    for (int64_t b = 0; b < d.B; ++b)
        for (int64_t h = 0; h < d.nh; ++h) {
            const int64_t g = h / (d.nh / d.nkv);
            for (int64_t t = 0; t < d.T; ++t) {
                std::vector<double> score(t + 1);
                for (int64_t s = 0; s <= t; ++s) {
                    double dot = 0;
                    for (int64_t i = 0; i < d.hd; ++i)
                        dot += q[((b * d.T + t) * d.nh + h) * d.hd + i] * k[((b * d.T + s) * d.nkv + g) * d.hd + i];
                    score[s] = dot / std::sqrt(double(d.hd));
                }
                const double max = *std::max_element(score.begin(), score.end());
                double sum = 0;
                for (double x : score) sum += std::exp(x - max);
                r.lse[(b * d.nh + h) * d.T + t] = max + std::log(sum);
                for (int64_t i = 0; i < d.hd; ++i) {
                    double o = 0;
                    for (int64_t s = 0; s <= t; ++s)
                        o += std::exp(score[s] - max) / sum * v[((b * d.T + s) * d.nkv + g) * d.hd + i];
                    r.out[((b * d.T + t) * d.nh + h) * d.hd + i] = o;
                }
            }
        }
    return r;
}

// The op's buffers for one shape, in T.
template <class T> struct Buffers {
    Shape d;
    std::vector<T> q, k, v, out, lse;

    Tensor tq() { return tensor(q, {d.B, d.T, d.nh, d.hd}); }
    Tensor tk() { return tensor(k, {d.B, d.T, d.nkv, d.hd}); }
    Tensor tv() { return tensor(v, {d.B, d.T, d.nkv, d.hd}); }
    Tensor tout() { return tensor(out, {d.B, d.T, d.nh, d.hd}); }
    Tensor tlse() { return tensor(lse, {d.B, d.nh, d.T}); }
};

template <class T> Buffers<T> random_buffers(const Shape& d, Rng& rng, double q_scale = 1) {
    return {d, cast<T>(normals(d.q_size(), rng, q_scale)), cast<T>(normals(d.kv_size(), rng)),
            cast<T>(normals(d.kv_size(), rng)), std::vector<T>(d.q_size()), std::vector<T>(d.lse_size())};
}

template <class T> void check_forward(const Shape& d, double q_scale) {
    CpuOps ops;
    Rng rng(1, "attention forward");
    Buffers<T> x = random_buffers<T>(d, rng, q_scale);
    ops.attention_forward(x.tout(), x.tlse(), x.tq(), x.tk(), x.tv());
    auto widen = [](const std::vector<T>& a) { return std::vector<double>(a.begin(), a.end()); };
    const Reference r = naive_attention(d, widen(x.q), widen(x.k), widen(x.v));
    require_close("out", x.out, r.out, tolerance<T>());
    require_close("lse", x.lse, r.lse, tolerance<T>());
}

}  // namespace

TEST_CASE("attention_forward matches a naive causal softmax", "[unit]") {
    for (const Shape& d : {Shape{2, 7, 4, 2, 6}, Shape{1, 5, 3, 1, 4}, Shape{2, 3, 2, 2, 8}}) {
        INFO("B " << d.B << " T " << d.T << " nh " << d.nh << " nkv " << d.nkv << " hd " << d.hd);
        check_forward<float>(d, 1);
        check_forward<double>(d, 1);
    }
    // Scores in the hundreds: exp would overflow without the max shift.
    check_forward<float>({2, 7, 4, 2, 6}, 100);
    check_forward<double>({2, 7, 4, 2, 6}, 100);
}

TEST_CASE("attention_backward matches finite differences with grouped kv heads", "[unit]") {
    const Shape d{2, 7, 4, 2, 6};
    CpuOps ops;
    Rng rng(2, "attention backward");
    Buffers<double> x = random_buffers<double>(d, rng);
    std::vector<double> dout = normals(d.q_size(), rng);
    auto loss = [&] {
        ops.attention_forward(x.tout(), x.tlse(), x.tq(), x.tk(), x.tv());
        return dot(dout, x.out);
    };
    loss();
    const std::vector<double> dq0 = normals(d.q_size(), rng), dk0 = normals(d.kv_size(), rng),
                              dv0 = normals(d.kv_size(), rng);
    std::vector<double> dq = dq0, dk = dk0, dv = dv0;
    ops.attention_backward(tensor(dq, {d.B, d.T, d.nh, d.hd}), tensor(dk, {d.B, d.T, d.nkv, d.hd}),
                           tensor(dv, {d.B, d.T, d.nkv, d.hd}), tensor(dout, {d.B, d.T, d.nh, d.hd}), x.tq(),
                           x.tk(), x.tv(), x.tout(), x.tlse(), Write::add, std::nullopt);
    // The loss sums 336 terms, so its rounding (~1e-14) over a step of 1e-6
    // would swamp small gradients; a step of 1e-5 keeps both that noise and
    // the truncation error near 1e-10.
    const double rtol = 1e-6, atol = 1e-9, step = 1e-5;
    const int64_t checks = 96;
    check_gradient("dq", loss, x.q.data(), accumulated(dq, dq0).data(), d.q_size(), rtol, atol, checks, step);
    check_gradient("dk", loss, x.k.data(), accumulated(dk, dk0).data(), d.kv_size(), rtol, atol, checks, step);
    check_gradient("dv", loss, x.v.data(), accumulated(dv, dv0).data(), d.kv_size(), rtol, atol, checks, step);

    // Without dk, dq and dv come out the same (from out and lse of the unperturbed inputs).
    loss();
    std::vector<double> dq_alone = dq0, dv_alone = dv0;
    ops.attention_backward(tensor(dq_alone, {d.B, d.T, d.nh, d.hd}), {}, tensor(dv_alone, {d.B, d.T, d.nkv, d.hd}),
                           tensor(dout, {d.B, d.T, d.nh, d.hd}), x.tq(), x.tk(), x.tv(), x.tout(), x.tlse(),
                           Write::add, std::nullopt);
    REQUIRE(dq_alone == dq);
    REQUIRE(dv_alone == dv);

    // Overwriting: what the gradients held is gone.
    std::vector<double> dq_over = normals(d.q_size(), rng), dk_over = normals(d.kv_size(), rng),
                        dv_over = normals(d.kv_size(), rng);
    ops.attention_backward(tensor(dq_over, {d.B, d.T, d.nh, d.hd}), tensor(dk_over, {d.B, d.T, d.nkv, d.hd}),
                           tensor(dv_over, {d.B, d.T, d.nkv, d.hd}), tensor(dout, {d.B, d.T, d.nh, d.hd}), x.tq(),
                           x.tk(), x.tv(), x.tout(), x.tlse(), Write::overwrite, std::nullopt);
    const std::vector<double> grad_q = accumulated(dq, dq0), grad_k = accumulated(dk, dk0),
                              grad_v = accumulated(dv, dv0);
    for (int64_t i = 0; i < d.q_size(); ++i) REQUIRE(dq_over[i] == Approx(grad_q[i]).margin(1e-12));
    for (int64_t i = 0; i < d.kv_size(); ++i) {
        REQUIRE(dk_over[i] == Approx(grad_k[i]).margin(1e-12));
        REQUIRE(dv_over[i] == Approx(grad_v[i]).margin(1e-12));
    }
}

TEST_CASE("attention_backward with a RoPE theta gives the gradients of q and k before the rotation", "[unit]") {
    const Shape d{2, 7, 4, 2, 6};
    const double theta = 10000;
    CpuOps ops;
    Rng rng(5, "attention backward rope");
    Buffers<double> x = random_buffers<double>(d, rng);
    std::vector<double> q_raw = x.q, k_raw = x.k;
    const std::vector<double> dout = normals(d.q_size(), rng);
    auto forward = [&] {  // q, k = rope(q_raw), rope(k_raw)
        x.q = q_raw;
        x.k = k_raw;
        ops.rope_forward(x.tq(), theta, 0);
        ops.rope_forward(x.tk(), theta, 0);
        ops.attention_forward(x.tout(), x.tlse(), x.tq(), x.tk(), x.tv());
    };
    auto loss = [&] {
        forward();
        return dot(dout, x.out);
    };
    for (Write write : {Write::overwrite, Write::add}) {
        INFO((write == Write::add ? "adding" : "overwriting"));
        forward();
        const std::vector<double> dq0 = normals(d.q_size(), rng), dk0 = normals(d.kv_size(), rng),
                                  dv0 = normals(d.kv_size(), rng);
        std::vector<double> dq = dq0, dk = dk0, dv = dv0, dout_copy = dout;
        ops.attention_backward(tensor(dq, {d.B, d.T, d.nh, d.hd}), tensor(dk, {d.B, d.T, d.nkv, d.hd}),
                               tensor(dv, {d.B, d.T, d.nkv, d.hd}), tensor(dout_copy, {d.B, d.T, d.nh, d.hd}),
                               x.tq(), x.tk(), x.tv(), x.tout(), x.tlse(), write, theta);
        if (write == Write::add) {
            dq = accumulated(dq, dq0);
            dk = accumulated(dk, dk0);
            dv = accumulated(dv, dv0);
        }
        const double rtol = 1e-6, atol = 1e-9, step = 1e-5;
        check_gradient("dq", loss, q_raw.data(), dq.data(), d.q_size(), rtol, atol, 96, step);
        check_gradient("dk", loss, k_raw.data(), dk.data(), d.kv_size(), rtol, atol, 96, step);
        check_gradient("dv", loss, x.v.data(), dv.data(), d.kv_size(), rtol, atol, 96, step);
    }
}

namespace {

// q, k and v side by side in rows of nh + 2 nkv + 1 heads, as the stacked
// projection holds them, with one more head no op may touch: attention on
// those views gives what it gives on whole copies, bit for bit, and writes
// dq, dk and dv into such rows as it writes them whole (RoPE and not,
// overwriting and adding).
template <class T> void check_stacked_rows(const Shape& d) {
    CpuOps ops;
    Rng rng(7, "attention stacked rows");
    const int64_t row = d.nh + 2 * d.nkv + 1, positions = d.B * d.T;
    const std::vector<T> rows = cast<T>(normals(positions * row * d.hd, rng));
    const auto whole = [&](const std::vector<T>& r, int64_t first, int64_t count) {
        return heads_apart(r, positions, row, first, count, d.hd);
    };
    std::vector<T> q = whole(rows, 0, d.nh), k = whole(rows, d.nh, d.nkv), v = whole(rows, d.nh + d.nkv, d.nkv);
    std::vector<T> stacked = rows;
    const Tensor packed = tensor(stacked, {d.B, d.T, row, d.hd});
    const Heads pq(packed, 0, d.nh), pk(packed, d.nh, d.nkv), pv(packed, d.nh + d.nkv, d.nkv);
    const Tensor tq = tensor(q, {d.B, d.T, d.nh, d.hd}), tk = tensor(k, {d.B, d.T, d.nkv, d.hd}),
                 tv = tensor(v, {d.B, d.T, d.nkv, d.hd});

    std::vector<T> out(d.q_size()), lse(d.lse_size()), out_p(out.size()), lse_p(lse.size());
    ops.attention_forward(tensor(out, {d.B, d.T, d.nh, d.hd}), tensor(lse, {d.B, d.nh, d.T}), tq, tk, tv);
    ops.attention_forward(tensor(out_p, {d.B, d.T, d.nh, d.hd}), tensor(lse_p, {d.B, d.nh, d.T}), pq, pk, pv);
    REQUIRE(out_p == out);
    REQUIRE(lse_p == lse);

    std::vector<T> dout = cast<T>(normals(d.q_size(), rng));
    const Tensor tout = tensor(out, {d.B, d.T, d.nh, d.hd}), tlse = tensor(lse, {d.B, d.nh, d.T}),
                 tdout = tensor(dout, {d.B, d.T, d.nh, d.hd});
    for (const std::optional<double> theta : {std::optional<double>{}, std::optional<double>{10000.0}})
        for (const Write write : {Write::overwrite, Write::add}) {
            INFO((theta ? "rope, " : "no rope, ") << (write == Write::add ? "adding" : "overwriting"));
            const std::vector<T> before = cast<T>(normals(positions * row * d.hd, rng));
            std::vector<T> grads = before, dq = whole(before, 0, d.nh), dk = whole(before, d.nh, d.nkv),
                           dv = whole(before, d.nh + d.nkv, d.nkv);
            ops.attention_backward(tensor(dq, {d.B, d.T, d.nh, d.hd}), tensor(dk, {d.B, d.T, d.nkv, d.hd}),
                                   tensor(dv, {d.B, d.T, d.nkv, d.hd}), tdout, tq, tk, tv, tout, tlse, write, theta);
            const Tensor g = tensor(grads, {d.B, d.T, row, d.hd});
            ops.attention_backward(Heads(g, 0, d.nh), Heads(g, d.nh, d.nkv), Heads(g, d.nh + d.nkv, d.nkv), tdout,
                                   pq, pk, pv, tout, tlse, write, theta);
            REQUIRE(whole(grads, 0, d.nh) == dq);
            REQUIRE(whole(grads, d.nh, d.nkv) == dk);
            REQUIRE(whole(grads, d.nh + d.nkv, d.nkv) == dv);
            REQUIRE(whole(grads, row - 1, 1) == whole(before, row - 1, 1));  // the extra head is untouched
        }
    REQUIRE(stacked == rows);  // the inputs too
}

}  // namespace

TEST_CASE("attention on q, k, v in stacked rows gives whole tensors' results bit for bit", "[unit]") {
    check_stacked_rows<float>({2, 7, 4, 2, 6});
    check_stacked_rows<double>({2, 7, 4, 2, 6});
    check_stacked_rows<double>({1, 5, 3, 1, 4});
}

TEST_CASE("attention results do not depend on the thread count", "[unit]") {
    const Shape d{2, 47, 4, 2, 16};
    REQUIRE(worth_threads(d.B * d.nh * d.T * d.T * d.hd));  // the threads do split the work
    CpuOps ops;
    Rng rng(3, "attention threads");
    Buffers<float> x = random_buffers<float>(d, rng);
    std::vector<float> dout = cast<float>(normals(d.q_size(), rng));
    require_same_for_1_and_2_threads([&] {
        std::vector<float> dq(d.q_size()), dk(d.kv_size()), dv(d.kv_size());
        ops.attention_forward(x.tout(), x.tlse(), x.tq(), x.tk(), x.tv());
        ops.attention_backward(tensor(dq, {d.B, d.T, d.nh, d.hd}), tensor(dk, {d.B, d.T, d.nkv, d.hd}),
                               tensor(dv, {d.B, d.T, d.nkv, d.hd}), tensor(dout, {d.B, d.T, d.nh, d.hd}), x.tq(),
                               x.tk(), x.tv(), x.tout(), x.tlse(), Write::add, std::nullopt);
        return std::vector<std::vector<float>>{x.out, x.lse, dq, dk, dv};
    });
}

TEST_CASE("attention rejects kv heads that do not divide the query heads", "[unit]") {
    CpuOps ops;
    Rng rng(4, "attention shapes");
    Buffers<float> x = random_buffers<float>({1, 4, 3, 2, 4}, rng);
    require_logic_error([&] { ops.attention_forward(x.tout(), x.tlse(), x.tq(), x.tk(), x.tv()); },
                        {"attention_forward", "[1, 4, 3, 4]", "[1, 4, 2, 4]"});
    // k and v in rows of unlike widths: one stride cannot serve both.
    std::vector<float> rows(1 * 4 * 5 * 4);
    const Tensor packed = tensor(rows, {1, 4, 5, 4});
    Buffers<float> y = random_buffers<float>({1, 4, 2, 1, 4}, rng);
    require_logic_error(
        [&] { ops.attention_forward(y.tout(), y.tlse(), y.tq(), Heads(packed, 3, 1), y.tv()); },
        {"attention_forward", "rows of as many heads", "[1, 4, 5, 4] heads 3..3"});
}

namespace {

// attention_decode over the whole sequence as a cache, its queries split in
// chunks [first, first + n): each chunk's output is the forward's rows, bit
// for bit (the same per-query loop).
template <class T> void check_decode_equals_forward(const Shape& d) {
    CpuOps ops;
    Rng rng(5, "attention decode");
    Buffers<T> x = random_buffers<T>(d, rng);
    ops.attention_forward(x.tout(), x.tlse(), x.tq(), x.tk(), x.tv());
    const Tensor k_cache = x.tk().view({d.T, d.nkv, d.hd}), v_cache = x.tv().view({d.T, d.nkv, d.hd});
    std::vector<T> out(size_t(d.q_size()));
    const Tensor q_all = x.tq().view({d.T, d.nh, d.hd}), out_all = tensor(out, {d.T, d.nh, d.hd});
    for (const auto& [first, n] : {std::pair<int64_t, int64_t>{0, 1}, {1, 4}, {5, 1}, {6, d.T - 6}})
        ops.attention_decode(out_all.rows(first, first + n), q_all.rows(first, first + n), k_cache, v_cache, first);
    REQUIRE(out == x.out);
}

}  // namespace

TEST_CASE("attention_decode gives attention_forward's rows bit for bit", "[unit]") {
    for (const Shape& d : {Shape{1, 11, 4, 2, 6}, Shape{1, 9, 3, 1, 4}, Shape{1, 40, 4, 4, 16}}) {
        INFO("T " << d.T << " nh " << d.nh << " nkv " << d.nkv << " hd " << d.hd);
        check_decode_equals_forward<float>(d);
        check_decode_equals_forward<double>(d);
    }
}

TEST_CASE("attention_decode rejects queries past the cache and mismatched heads", "[unit]") {
    CpuOps ops;
    std::vector<float> q(2 * 4 * 8), out(q.size()), k(6 * 2 * 8), v(k.size()), k3(6 * 3 * 8);
    const Tensor tq = tensor(q, {2, 4, 8}), tout = tensor(out, {2, 4, 8}), tk = tensor(k, {6, 2, 8});
    ops.attention_decode(tout, tq, tk, tensor(v, {6, 2, 8}), 4);  // positions 4 and 5 of 6: fits
    require_logic_error([&] { ops.attention_decode(tout, tq, tk, tensor(v, {6, 2, 8}), 5); },
                        {"attention_decode", "first position 5", "[6, 2, 8]"});
    require_logic_error([&] { ops.attention_decode(tout, tq, tensor(k3, {6, 3, 8}), tensor(k3, {6, 3, 8}), 0); },
                        {"attention_decode", "nkv dividing nh"});
}
