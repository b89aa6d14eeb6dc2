// AdamW on the CPU against a step worked out by hand and a second step
// written out as torch.optim.AdamW computes it; one call over a list of
// tensors against that step on each.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr double kDecay = 0.1;

AdamWParams params(int64_t step) {
    AdamWParams a;
    a.lr = 0.01;
    a.grad_scale = 0.5;
    a.step = step;
    return a;  // beta1 0.9, beta2 0.95, eps 1e-8
}

// The step on one tensor with the op's decay.
template <class T> AdamWTensor one(std::vector<T>& p, std::vector<T>& g, std::vector<T>& m, std::vector<T>& v,
                                   std::initializer_list<int64_t> dims, Tensor work = {}) {
    return {tensor(p, dims), tensor(g, dims), tensor(m, dims), tensor(v, dims), work, kDecay};
}

// One step as torch.optim.AdamW does it, in double.
void reference_step(std::vector<double>& p, const std::vector<double>& grad, std::vector<double>& m,
                    std::vector<double>& v, const AdamWParams& a, double weight_decay = kDecay) {
    const double c1 = 1 - std::pow(a.beta1, double(a.step)), c2 = 1 - std::pow(a.beta2, double(a.step));
    for (size_t i = 0; i < p.size(); ++i) {
        const double g = grad[i] * a.grad_scale;
        p[i] *= 1 - a.lr * weight_decay;
        m[i] = a.beta1 * m[i] + (1 - a.beta1) * g;
        v[i] = a.beta2 * v[i] + (1 - a.beta2) * g * g;
        p[i] -= a.lr / c1 * m[i] / (std::sqrt(v[i]) / std::sqrt(c2) + a.eps);
    }
}

template <class T> void check_two_steps() {
    CpuOps ops;
    std::vector<T> p = {1, -2, 0.5}, m(3), v(3);
    std::vector<T> g = {0.4, -0.2, 0};
    ops.adamw_step({one(p, g, m, v, {3})}, params(1));
    // Step 1 by hand, g = 0.5 * grad = (0.2, -0.1, 0): m = 0.1 g, v = 0.05 g^2, so
    // m/(1-0.9) = g and sqrt(v/(1-0.95)) = |g|; p = 0.999 p - 0.01 g / (|g| + 1e-8).
    require_close("m", m, {0.02, -0.01, 0}, tolerance<T>());
    require_close("v", v, {0.002, 0.0005, 0}, tolerance<T>());
    require_close("param", p, {0.999 - 0.002 / 0.20000001, -1.998 + 0.001 / 0.10000001, 0.4995}, tolerance<T>());

    // Step 2 from the state step 1 left, with bias corrections for step 2.
    std::vector<double> p_ref(p.begin(), p.end()), m_ref(m.begin(), m.end()), v_ref(v.begin(), v.end());
    g = {-0.3, 0.6, 0.1};
    reference_step(p_ref, {-0.3, 0.6, 0.1}, m_ref, v_ref, params(2));
    ops.adamw_step({one(p, g, m, v, {3})}, params(2));
    require_close("m", m, m_ref, tolerance<T>());
    require_close("v", v, v_ref, tolerance<T>());
    require_close("param", p, p_ref, tolerance<T>());
}

}  // namespace

TEST_CASE("adamw_step matches a hand-computed step and torch's second step", "[unit]") {
    check_two_steps<float>();
    check_two_steps<double>();
}

TEST_CASE("adamw_step rejects step 0 and mismatched state", "[unit]") {
    CpuOps ops;
    std::vector<float> p(3), g(3), m(3), v(2);
    std::vector<float> p2 = {1, 2, 3}, g2(3), m2(3), v2(3);
    AdamWTensor bad = one(p, g, m, v, {3});
    bad.v = tensor(v, {2});
    // A bad tensor anywhere in the list: nothing is updated.
    require_logic_error([&] { ops.adamw_step({one(p2, g2, m2, v2, {3}), bad}, params(1)); },
                        {"adamw_step", "[3]", "[2]"});
    REQUIRE(p2 == std::vector<float>{1, 2, 3});
    v.resize(3);
    require_logic_error([&] { ops.adamw_step({one(p, g, m, v, {3})}, params(0)); }, {"adamw_step", "step"});
}

TEST_CASE("adamw_step rewrites a working copy of another dtype from the new master value", "[unit]") {
    CpuOps ops;
    std::vector<double> p = {1, -2, 0.5}, m(3), v(3), g = {0.4, -0.2, 0.1};
    std::vector<float> work(3, 0.0f);
    ops.adamw_step({one(p, g, m, v, {3}, tensor(work, {3}))}, params(1));
    for (int i = 0; i < 3; ++i) REQUIRE(work[i] == float(p[i]));
    REQUIRE(work[0] != 1.0f);  // the step moved it
}

TEST_CASE("one adamw_step over many tensors gives each the bits of its own step", "[unit]") {
    // Sizes not a multiple of 4 and an empty one; decays of their own; a
    // separate working copy and one that is the parameter itself.
    const std::vector<int64_t> sizes = {5, 1027, 0, 8, 3, 4096};
    const std::vector<double> decays = {0.1, 0.0, 0.1, 0.05, 0.1, 0.0};
    CpuOps ops;
    Rng rng(5, "adamw list");
    std::vector<std::vector<float>> p, g, m, v;
    for (int64_t n : sizes) {
        p.push_back(normals<float>(n, rng));
        g.push_back(normals<float>(n, rng));
        m.push_back(normals<float>(n, rng, 0.1));
        std::vector<float> vi = normals<float>(n, rng, 0.01);
        for (float& x : vi) x = std::fabs(x);
        v.push_back(vi);
    }
    std::vector<float> work(static_cast<size_t>(sizes[1]));
    const AdamWParams a = params(3);
    std::vector<AdamWTensor> list;
    for (size_t t = 0; t < sizes.size(); ++t) {
        list.push_back({tensor(p[t], {sizes[t]}), tensor(g[t], {sizes[t]}), tensor(m[t], {sizes[t]}),
                        tensor(v[t], {sizes[t]}), {}, decays[t]});
    }
    list[1].work = tensor(work, {sizes[1]});
    list[3].work = list[3].param;
    // Each tensor's step in double, rounded to float as the op stores it.
    std::vector<std::vector<float>> p_ref, m_ref, v_ref;
    for (size_t t = 0; t < sizes.size(); ++t) {
        std::vector<double> pd(p[t].begin(), p[t].end()), md(m[t].begin(), m[t].end()), vd(v[t].begin(), v[t].end());
        reference_step(pd, std::vector<double>(g[t].begin(), g[t].end()), md, vd, a, decays[t]);
        p_ref.push_back(cast<float>(pd));
        m_ref.push_back(cast<float>(md));
        v_ref.push_back(cast<float>(vd));
    }
    ops.adamw_step(list, a);
    for (size_t t = 0; t < sizes.size(); ++t) {
        INFO("tensor " << t << " of " << sizes[t]);
        REQUIRE(p[t] == p_ref[t]);
        REQUIRE(m[t] == m_ref[t]);
        REQUIRE(v[t] == v_ref[t]);
    }
    REQUIRE(work == p[1]);
}
