// The learned router's CPU ops: forward against naive loops in long double,
// backward against central finite differences in double.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"

using namespace moe;

namespace {

template <class T> Tensor tensor(std::vector<T>& v, std::initializer_list<int64_t> dims) {
    return Tensor(v.data(), dtype_of<T>(), dims);
}

// Forward tolerance relative to max(1, |value|): a few ulp of each type.
template <class T> double tolerance() { return std::is_same<T, float>::value ? 2e-6 : 1e-13; }

// The router's tensors for N tokens, E experts and top-k, as host buffers.
template <class T> struct RouterBuffers {
    int64_t N, E, k;
    std::vector<T> logits, probs, lse, topk_w;
    std::vector<int32_t> topk_idx;

    RouterBuffers(const std::vector<double>& l, int64_t N_, int64_t E_, int64_t k_)
        : N(N_), E(E_), k(k_), logits(l.begin(), l.end()), probs(N * E), lse(N), topk_w(N * k), topk_idx(N * k) {}

    void forward(CpuOps& ops, const RouterScoring& scoring) {
        ops.router_forward(tensor(probs, {N, E}), tensor(lse, {N}), tensor(topk_idx, {N, k}), tensor(topk_w, {N, k}),
                           tensor(logits, {N, E}), scoring);
    }
    void forward(CpuOps& ops, bool normalize) { forward(ops, scoring_of(normalize)); }
    void backward(CpuOps& ops, std::vector<T>& dlogits, std::vector<T>* dtopk_w, const RouterScoring& scoring,
                  const std::vector<double>& aux_coef, double z_coef) {
        ops.router_backward(tensor(dlogits, {N, E}), dtopk_w ? tensor(*dtopk_w, {N, k}) : Tensor{},
                            tensor(probs, {N, E}), tensor(lse, {N}), tensor(topk_idx, {N, k}),
                            tensor(topk_w, {N, k}), scoring, aux_coef, z_coef);
    }
    void backward(CpuOps& ops, std::vector<T>& dlogits, std::vector<T>* dtopk_w, bool normalize,
                  const std::vector<double>& aux_coef, double z_coef) {
        backward(ops, dlogits, dtopk_w, scoring_of(normalize), aux_coef, z_coef);
    }
    static RouterScoring scoring_of(bool normalize) {
        RouterScoring s;
        s.normalize = normalize;
        return s;
    }
};

// Six rows of five experts: four random, then a three-way tie for the top
// (experts 1, 2, 4) and a row of equal logits.
std::vector<double> logits_with_ties() {
    Rng rng(1, "router logits");
    std::vector<double> l;
    for (int i = 0; i < 20; ++i) l.push_back(2 * rng.normal());
    for (double x : {1.0, 3.0, 3.0, 0.0, 3.0}) l.push_back(x);
    for (int i = 0; i < 5; ++i) l.push_back(0.5);
    return l;
}

template <class T> void check_forward_against_naive(int64_t k, bool normalize) {
    const int64_t N = 6, E = 5;
    const std::vector<double> l = logits_with_ties();
    CpuOps ops;
    RouterBuffers<T> r(l, N, E, k);
    r.forward(ops, normalize);
    for (int64_t n = 0; n < N; ++n) {
        long double m = l[n * E], s = 0;
        for (int64_t e = 0; e < E; ++e) m = std::max<long double>(m, l[n * E + e]);
        for (int64_t e = 0; e < E; ++e) s += std::exp(l[n * E + e] - m);
        const long double lse = m + std::log(s);
        std::vector<long double> p(E);
        for (int64_t e = 0; e < E; ++e) p[e] = std::exp(l[n * E + e] - lse);
        std::vector<int> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
        long double chosen = 0;
        for (int64_t j = 0; j < k; ++j) chosen += p[order[j]];

        INFO("row " << n << ", k " << k << ", normalize " << normalize);
        REQUIRE(std::fabs(double(r.lse[n] - lse)) <= tolerance<T>() * std::max(1.0, std::fabs(double(lse))));
        for (int64_t e = 0; e < E; ++e) REQUIRE(std::fabs(double(r.probs[n * E + e] - p[e])) <= tolerance<T>());
        for (int64_t j = 0; j < k; ++j) {
            REQUIRE(r.topk_idx[n * k + j] == order[j]);
            const long double w = normalize ? p[order[j]] / chosen : p[order[j]];
            REQUIRE(std::fabs(double(r.topk_w[n * k + j] - w)) <= tolerance<T>());
        }
    }
    // The ties, spelled out: largest first, then the lower expert index.
    REQUIRE(r.topk_idx[4 * k] == 1);
    REQUIRE(r.topk_idx[5 * k] == 0);
    if (k == 2) {
        REQUIRE(r.topk_idx[4 * k + 1] == 2);
        REQUIRE(r.topk_idx[5 * k + 1] == 1);
        if (normalize) REQUIRE(double(r.topk_w[5 * k]) == Approx(0.5));
    }
}

// Logits whose ranks are separated by at least 0.5, so a finite-difference
// step cannot change the top-k set.
std::vector<double> logits_with_gaps(int64_t N, int64_t E, Rng& rng) {
    std::vector<double> l(N * E);
    std::vector<int> rank(E);
    for (int64_t n = 0; n < N; ++n) {
        std::iota(rank.begin(), rank.end(), 0);
        std::shuffle(rank.begin(), rank.end(), rng.engine());
        for (int64_t e = 0; e < E; ++e) l[n * E + e] = 0.6 * rank[e] + 0.1 * rng.uniform();
    }
    return l;
}

std::vector<double> normals(int64_t n, Rng& rng, double scale = 1) {
    std::vector<double> v(n);
    for (double& x : v) x = scale * rng.normal();
    return v;
}

void check_backward_against_finite_differences(int64_t k, bool normalize) {
    const int64_t N = 4, E = 5;
    const double z_coef = 0.05;
    Rng rng(2, "router backward");
    RouterBuffers<double> r(logits_with_gaps(N, E, rng), N, E, k);
    std::vector<double> c = normals(N * k, rng);      // upstream gradient of topk_w
    std::vector<double> aux = normals(E, rng, 0.3);  // Switch loss coefficients
    CpuOps ops;
    auto loss = [&] {
        r.forward(ops, normalize);
        double f = 0;
        for (int64_t i = 0; i < N * k; ++i) f += c[i] * r.topk_w[i];
        for (int64_t i = 0; i < N * E; ++i) f += aux[i % E] * r.probs[i];
        for (double l : r.lse) f += z_coef * l * l;
        return f;
    };
    loss();
    // Start from nonzero gradients: the op must add, not overwrite.
    const std::vector<double> before = normals(N * E, rng);
    std::vector<double> dlogits = before;
    r.backward(ops, dlogits, &c, normalize, aux, z_coef);
    for (int64_t i = 0; i < N * E; ++i) dlogits[i] -= before[i];
    // atol: the loss is O(5), so rounding in the two evaluations of a central
    // difference with eps 1e-6 is up to ~1e-15 * 5 / 2e-6 = 2.5e-9.
    test::check_gradient("dlogits", loss, r.logits.data(), dlogits.data(), N * E, 1e-6, 1e-8);
}

}  // namespace

TEST_CASE("router_forward matches a naive softmax and top-k, ties to the lower expert", "[unit]") {
    for (int64_t k : {1, 2})
        for (bool normalize : {true, false}) {
            check_forward_against_naive<float>(k, normalize);
            check_forward_against_naive<double>(k, normalize);
        }
}

TEST_CASE("router_forward names k distinct experts for a row of NaN logits", "[unit]") {
    const double nan = std::nan("");
    RouterBuffers<double> r({nan, nan, nan}, 1, 3, 2);
    CpuOps ops;
    r.forward(ops, true);
    REQUIRE(r.topk_idx == std::vector<int32_t>{0, 1});
    REQUIRE(std::isnan(r.topk_w[0]));
}

TEST_CASE("router_backward matches finite differences", "[unit]") {
    for (int64_t k : {1, 2})
        for (bool normalize : {true, false}) {
            INFO("k " << k << ", normalize " << normalize);
            check_backward_against_finite_differences(k, normalize);
        }
}

TEST_CASE("router_backward without dtopk_w drops only the top-k term", "[unit]") {
    const int64_t N = 3, E = 4, k = 2;
    Rng rng(3, "router no dtopk");
    RouterBuffers<double> r(logits_with_gaps(N, E, rng), N, E, k);
    CpuOps ops;
    r.forward(ops, true);
    const std::vector<double> aux = normals(E, rng);
    std::vector<double> zeros(N * k, 0.0), with_zeros(N * E, 0.0), without(N * E, 0.0);
    r.backward(ops, with_zeros, &zeros, true, aux, 0.1);
    r.backward(ops, without, nullptr, true, aux, 0.1);
    REQUIRE(without == with_zeros);
    REQUIRE(std::any_of(without.begin(), without.end(), [](double g) { return g != 0; }));
}

TEST_CASE("router_backward in F32 agrees with F64", "[unit]") {
    const int64_t N = 4, E = 5, k = 2;
    Rng rng(4, "router f32");
    const std::vector<double> l = logits_with_gaps(N, E, rng);
    const std::vector<double> c = normals(N * k, rng), aux = normals(E, rng, 0.3);
    RouterBuffers<double> r64(l, N, E, k);
    RouterBuffers<float> r32(l, N, E, k);
    CpuOps ops;
    r64.forward(ops, true);
    r32.forward(ops, true);
    std::vector<double> c64(c), d64(N * E, 0.0);
    std::vector<float> c32(c.begin(), c.end()), d32(N * E, 0.0f);
    r64.backward(ops, d64, &c64, true, aux, 0.05);
    r32.backward(ops, d32, &c32, true, aux, 0.05);
    for (int64_t i = 0; i < N * E; ++i) REQUIRE(d32[i] == Approx(d64[i]).margin(1e-6));
}

TEST_CASE("router_backward rejects aux_coef of the wrong length", "[unit]") {
    RouterBuffers<double> r({0.0, 1.0, 2.0}, 1, 3, 1);
    CpuOps ops;
    r.forward(ops, true);
    std::vector<double> d(3, 0.0);
    try {
        r.backward(ops, d, nullptr, true, {1.0, 2.0}, 0.0);
        FAIL("router_backward accepted 2 aux coefficients for 3 experts");
    } catch (const std::invalid_argument& e) {
        REQUIRE(std::string(e.what()).find("aux_coef") != std::string::npos);
    }
}

TEST_CASE("router_stats sums probabilities per expert and squared lse", "[unit]") {
    const int64_t N = 6, E = 5;
    RouterBuffers<float> r(logits_with_ties(), N, E, 2);
    CpuOps ops;
    r.forward(ops, true);
    std::vector<double> stats(E + 1, 42.0);  // garbage on purpose: the op overwrites it
    ops.router_stats(Tensor(stats.data(), DType::F64, {E + 1}), tensor(r.probs, {N, E}), tensor(r.lse, {N}),
                     RouterScoring{});
    const std::vector<double> sums(stats.begin(), stats.begin() + E);
    const double lse_sq = stats[E];
    double expected_lse_sq = 0;
    for (int64_t n = 0; n < N; ++n) expected_lse_sq += double(r.lse[n]) * r.lse[n];
    REQUIRE(lse_sq == Approx(expected_lse_sq).epsilon(1e-12));
    for (int64_t e = 0; e < E; ++e) {
        double expected = 0;
        for (int64_t n = 0; n < N; ++n) expected += r.probs[n * E + e];
        REQUIRE(sums[e] == Approx(expected).epsilon(1e-12));
    }
    // Each row of probs sums to one, so the column sums add up to N.
    REQUIRE(std::accumulate(sums.begin(), sums.end(), 0.0) == Approx(double(N)).epsilon(1e-6));
}

// ---- router options (docs/MODEL-OPTIONS.md "Router options") ----------------

namespace {

// A naive choice for one token: keys s + bias, groups scored by their two
// largest keys, the k best allowed experts; ties to the lower index.
std::vector<int> naive_choice(const std::vector<double>& s, const std::vector<double>& bias, int G, int M, int k) {
    const int E = int(s.size()), size = E / G;
    std::vector<double> key(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) key[size_t(e)] = s[size_t(e)] + bias[size_t(e)];
    std::vector<int> groups(static_cast<size_t>(G));
    std::iota(groups.begin(), groups.end(), 0);
    auto group_score = [&](int g) {
        std::vector<double> keys(key.begin() + g * size, key.begin() + (g + 1) * size);
        std::sort(keys.rbegin(), keys.rend());
        return size > 1 ? keys[0] + keys[1] : keys[0];
    };
    std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) { return group_score(a) > group_score(b); });
    std::vector<int> allowed;
    for (int i = 0; i < M; ++i)
        for (int e = groups[size_t(i)] * size; e < (groups[size_t(i)] + 1) * size; ++e) allowed.push_back(e);
    std::sort(allowed.begin(), allowed.end());
    std::stable_sort(allowed.begin(), allowed.end(), [&](int a, int b) { return key[size_t(a)] > key[size_t(b)]; });
    allowed.resize(size_t(k));
    return allowed;
}

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

}  // namespace

TEST_CASE("sigmoid scores choose by score plus bias within the best groups, weights unbiased", "[unit]") {
    const int64_t N = 16, E = 8, k = 3;
    Rng rng(7, "router options");
    std::vector<double> l = normals(N * E, rng, 2);
    std::vector<double> bias(E);  // in the scores' dtype
    for (double& b : bias) b = 0.3 * rng.normal();
    for (bool sigmoid : {false, true})
        for (int G : {1, 4}) {
            const int M = G == 1 ? 1 : 2;
            CAPTURE(sigmoid, G);
            RouterBuffers<double> r(l, N, E, k);
            RouterScoring sc;
            sc.sigmoid = sigmoid;
            sc.bias = Tensor(bias.data(), DType::F64, {E});
            sc.groups = G;
            sc.group_limit = M;
            CpuOps ops;
            r.forward(ops, sc);
            for (int64_t n = 0; n < N; ++n) {
                std::vector<double> s(E);
                double lse = 0, m = -INFINITY;
                for (int64_t e = 0; e < E; ++e) m = std::max(m, l[n * E + e]);
                for (int64_t e = 0; e < E; ++e) lse += std::exp(l[n * E + e] - m);
                lse = m + std::log(lse);
                for (int64_t e = 0; e < E; ++e) s[e] = sigmoid ? ::sigmoid(l[n * E + e]) : std::exp(l[n * E + e] - lse);
                const double sum = std::accumulate(s.begin(), s.end(), 0.0);
                REQUIRE(r.lse[n] == Approx(sigmoid ? std::log(sum) : lse).epsilon(1e-13));
                for (int64_t e = 0; e < E; ++e) REQUIRE(r.probs[n * E + e] == Approx(s[e]).epsilon(1e-13));
                const std::vector<int> want = naive_choice(s, std::vector<double>(bias.begin(), bias.end()), G, M, int(k));
                double chosen = 0;
                for (int j = 0; j < k; ++j) chosen += s[want[j]];
                for (int j = 0; j < k; ++j) {
                    REQUIRE(r.topk_idx[n * k + j] == want[j]);
                    REQUIRE(r.topk_w[n * k + j] == Approx(s[want[j]] / chosen).epsilon(1e-13));  // no bias
                }
                if (G == 4)  // the chosen experts lie in at most 2 groups
                    REQUIRE(std::set<int>{want[0] / 2, want[1] / 2, want[2] / 2}.size() <= 2);
            }
        }
}

TEST_CASE("a large bias moves the choice but not the weights", "[unit]") {
    // Logits favour expert 0; a bias of 10 on expert 3 makes it first.
    RouterBuffers<double> r({3.0, 1.0, 0.5, 0.0}, 1, 4, 2);
    std::vector<double> bias = {0, 0, 0, 10};
    RouterScoring sc;
    sc.sigmoid = true;
    sc.normalize = false;
    sc.bias = Tensor(bias.data(), DType::F64, {4});
    CpuOps ops;
    r.forward(ops, sc);
    REQUIRE(r.topk_idx == std::vector<int32_t>{3, 0});
    CHECK(r.topk_w[0] == Approx(0.5));            // sigmoid(0)
    CHECK(r.topk_w[1] == Approx(::sigmoid(3.0)));  // unnormalised
}

TEST_CASE("sigmoid router_backward matches finite differences of the weights and balance terms", "[unit]") {
    const int64_t N = 4, E = 6, k = 2;
    Rng rng(8, "sigmoid backward");
    for (bool normalize : {true, false}) {
        CAPTURE(normalize);
        RouterBuffers<double> r(logits_with_gaps(N, E, rng), N, E, k);
        const std::vector<double> c = normals(N * k, rng), aux = normals(E, rng, 0.3);
        std::vector<double> cc(c);
        RouterScoring sc;
        sc.sigmoid = true;
        sc.normalize = normalize;
        CpuOps ops;
        auto loss = [&] {
            r.forward(ops, sc);
            double f = 0;
            for (int64_t i = 0; i < N * k; ++i) f += c[i] * r.topk_w[i];
            for (int64_t n = 0; n < N; ++n) {
                double sum = 0;
                for (int64_t e = 0; e < E; ++e) sum += r.probs[n * E + e];
                for (int64_t e = 0; e < E; ++e) f += aux[e] * r.probs[n * E + e] / sum;  // q
            }
            return f;
        };
        loss();
        const std::vector<double> before = normals(N * E, rng);
        std::vector<double> dlogits = before;
        r.backward(ops, dlogits, &cc, sc, aux, 0.0);
        for (int64_t i = 0; i < N * E; ++i) dlogits[i] -= before[i];
        test::check_gradient("dlogits", loss, r.logits.data(), dlogits.data(), N * E, 1e-6, 1e-8);
    }
}

TEST_CASE("sigmoid router_stats sums the scores normalised per token", "[unit]") {
    const int64_t N = 5, E = 4;
    Rng rng(9, "sigmoid stats");
    RouterBuffers<double> r(normals(N * E, rng), N, E, 1);
    RouterScoring sc;
    sc.sigmoid = true;
    CpuOps ops;
    r.forward(ops, sc);
    std::vector<double> stats(E + 1);
    ops.router_stats(Tensor(stats.data(), DType::F64, {E + 1}), tensor(r.probs, {N, E}), tensor(r.lse, {N}), sc);
    for (int64_t e = 0; e < E; ++e) {
        double want = 0;
        for (int64_t n = 0; n < N; ++n) {
            double sum = 0;
            for (int64_t f = 0; f < E; ++f) sum += r.probs[n * E + f];
            want += r.probs[n * E + e] / sum;
        }
        REQUIRE(stats[e] == Approx(want).epsilon(1e-12));
    }
    REQUIRE(std::accumulate(stats.begin(), stats.begin() + E, 0.0) == Approx(double(N)));
}

TEST_CASE("router options that cannot hold the choice are refused", "[unit]") {
    RouterBuffers<double> r({0.0, 1.0, 2.0, 3.0}, 1, 4, 3);
    CpuOps ops;
    RouterScoring sc;
    sc.groups = 4;
    sc.group_limit = 2;  // 2 experts reachable, top-3 asked
    REQUIRE_THROWS_WITH(r.forward(ops, sc), Catch::Contains("4 groups with a limit of 2 cannot hold top-3 of 4"));
    std::vector<double> d(4, 0.0);
    sc = RouterScoring{};
    sc.sigmoid = true;
    r.forward(ops, sc);
    REQUIRE_THROWS_WITH(r.backward(ops, d, nullptr, sc, {0, 0, 0, 0}, 0.1),
                        Catch::Contains("the z-loss is defined for softmax scores only"));
    std::vector<float> wrong_bias(4);  // not the scores' dtype
    sc.bias = Tensor(wrong_bias.data(), DType::F32, {4});
    REQUIRE_THROWS_WITH(r.forward(ops, sc), Catch::Contains("bias must be F64 [E] (4), got F32 [4]"));
}
