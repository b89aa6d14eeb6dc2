// AdamW on the CPU against a step worked out by hand and a second step
// written out as torch.optim.AdamW computes it.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

AdamWParams params(int64_t step) {
    AdamWParams a;
    a.lr = 0.01;
    a.weight_decay = 0.1;
    a.grad_scale = 0.5;
    a.step = step;
    return a;  // beta1 0.9, beta2 0.95, eps 1e-8
}

// One step as torch.optim.AdamW does it, in double.
void reference_step(std::vector<double>& p, const std::vector<double>& grad, std::vector<double>& m,
                    std::vector<double>& v, const AdamWParams& a) {
    const double c1 = 1 - std::pow(a.beta1, double(a.step)), c2 = 1 - std::pow(a.beta2, double(a.step));
    for (size_t i = 0; i < p.size(); ++i) {
        const double g = grad[i] * a.grad_scale;
        p[i] *= 1 - a.lr * a.weight_decay;
        m[i] = a.beta1 * m[i] + (1 - a.beta1) * g;
        v[i] = a.beta2 * v[i] + (1 - a.beta2) * g * g;
        p[i] -= a.lr / c1 * m[i] / (std::sqrt(v[i]) / std::sqrt(c2) + a.eps);
    }
}

template <class T> void check_two_steps() {
    CpuOps ops;
    std::vector<T> p = {1, -2, 0.5}, m(3), v(3);
    std::vector<T> g = {0.4, -0.2, 0};
    ops.adamw_step(tensor(p, {3}), tensor(g, {3}), tensor(m, {3}), tensor(v, {3}), Tensor{}, params(1));
    // Step 1 by hand, g = 0.5 * grad = (0.2, -0.1, 0): m = 0.1 g, v = 0.05 g^2, so
    // m/(1-0.9) = g and sqrt(v/(1-0.95)) = |g|; p = 0.999 p - 0.01 g / (|g| + 1e-8).
    require_close("m", m, {0.02, -0.01, 0}, tolerance<T>());
    require_close("v", v, {0.002, 0.0005, 0}, tolerance<T>());
    require_close("param", p, {0.999 - 0.002 / 0.20000001, -1.998 + 0.001 / 0.10000001, 0.4995}, tolerance<T>());

    // Step 2 from the state step 1 left, with bias corrections for step 2.
    std::vector<double> p_ref(p.begin(), p.end()), m_ref(m.begin(), m.end()), v_ref(v.begin(), v.end());
    g = {-0.3, 0.6, 0.1};
    reference_step(p_ref, {-0.3, 0.6, 0.1}, m_ref, v_ref, params(2));
    ops.adamw_step(tensor(p, {3}), tensor(g, {3}), tensor(m, {3}), tensor(v, {3}), Tensor{}, params(2));
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
    require_logic_error([&] { ops.adamw_step(tensor(p, {3}), tensor(g, {3}), tensor(m, {3}), tensor(v, {2}), Tensor{}, params(1)); },
                        {"adamw_step", "[3]", "[2]"});
    v.resize(3);
    require_logic_error([&] { ops.adamw_step(tensor(p, {3}), tensor(g, {3}), tensor(m, {3}), tensor(v, {3}), Tensor{}, params(0)); },
                        {"adamw_step", "step"});
}

TEST_CASE("adamw_step rewrites a working copy of another dtype from the new master value", "[unit]") {
    CpuOps ops;
    std::vector<double> p = {1, -2, 0.5}, m(3), v(3), g = {0.4, -0.2, 0.1};
    std::vector<float> work(3, 0.0f);
    ops.adamw_step(tensor(p, {3}), tensor(g, {3}), tensor(m, {3}), tensor(v, {3}), tensor(work, {3}), params(1));
    for (int i = 0; i < 3; ++i) REQUIRE(work[i] == float(p[i]));
    REQUIRE(work[0] != 1.0f);  // the step moved it
}
