// SiLU and SwiGLU on the CPU: forwards against naive formulas (including
// inputs far out on both tails), backwards against finite differences.
// SwiGLU reads rows [gate | up], as the experts' fused GEMM writes them.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int64_t R = 3, I = 5;

double silu(double x) { return x / (1 + std::exp(-x)); }

// Rows [g | u] of gate_up [R, 2I] from g and u [R, I].
template <class T> std::vector<T> joined(const std::vector<T>& g, const std::vector<T>& u) {
    std::vector<T> gu;
    for (int64_t r = 0; r < R; ++r) {
        gu.insert(gu.end(), g.begin() + r * I, g.begin() + (r + 1) * I);
        gu.insert(gu.end(), u.begin() + r * I, u.begin() + (r + 1) * I);
    }
    return gu;
}

std::vector<double> inputs(Rng& rng) {
    std::vector<double> x = normals(R * I, rng, 2.0);
    x[0] = -100;  // exp(100) overflows float: silu must still come out as 0
    x[1] = 100;
    return x;
}

template <class T> void check_forwards() {
    CpuOps ops;
    Rng rng(1, "activations forward");
    const std::vector<double> g0 = inputs(rng), u0 = normals(R * I, rng);
    std::vector<T> g = cast<T>(g0), gu = joined(g, cast<T>(u0)), y(R * I), out(R * I);
    ops.silu_forward(tensor(y, {R, I}), tensor(g, {R, I}));
    ops.swiglu_forward(tensor(out, {R, I}), tensor(gu, {R, 2 * I}));
    std::vector<double> expected_silu(R * I), expected_swiglu(R * I);
    for (int64_t i = 0; i < R * I; ++i) {
        expected_silu[i] = silu(g0[i]);
        expected_swiglu[i] = silu(g0[i]) * u0[i];
    }
    require_close("silu", y, expected_silu, tolerance<T>());
    require_close("swiglu", out, expected_swiglu, tolerance<T>());
}

}  // namespace

TEST_CASE("silu and swiglu forwards match naive formulas", "[unit]") {
    check_forwards<float>();
    check_forwards<double>();
}

TEST_CASE("silu_backward matches finite differences and accumulates", "[unit]") {
    CpuOps ops;
    Rng rng(2, "silu backward");
    std::vector<double> x = inputs(rng), dy = normals(R * I, rng), y(R * I);
    auto loss = [&] {
        ops.silu_forward(tensor(y, {R, I}), tensor(x, {R, I}));
        return dot(dy, y);
    };
    const std::vector<double> dx0 = normals(R * I, rng);
    std::vector<double> dx = dx0;
    ops.silu_backward(tensor(dx, {R, I}), tensor(dy, {R, I}), tensor(x, {R, I}));
    check_gradient("dx", loss, x.data(), accumulated(dx, dx0).data(), R * I);
}

TEST_CASE("swiglu_backward writes the finite-difference gradients of gate and up", "[unit]") {
    CpuOps ops;
    Rng rng(3, "swiglu backward");
    const std::vector<double> g = inputs(rng), u = normals(R * I, rng);
    std::vector<double> gu = joined(g, u), dout = normals(R * I, rng), out(R * I);
    auto loss = [&] {
        ops.swiglu_forward(tensor(out, {R, I}), tensor(gu, {R, 2 * I}));
        return dot(dout, out);
    };
    // what the buffer held before is overwritten, not added to
    std::vector<double> dgu = normals(R * 2 * I, rng);
    ops.swiglu_backward(tensor(dgu, {R, 2 * I}), tensor(dout, {R, I}), tensor(gu, {R, 2 * I}));
    check_gradient("dgate_up", loss, gu.data(), dgu.data(), R * 2 * I);
}

TEST_CASE("activations reject mismatched shapes", "[unit]") {
    CpuOps ops;
    std::vector<float> a(6), b(5);
    require_logic_error([&] { ops.silu_forward(tensor(a, {2, 3}), tensor(b, {5})); }, {"silu_forward", "[2, 3]", "[5]"});
    std::vector<float> c(2 * 5);
    require_logic_error([&] { ops.swiglu_forward(tensor(a, {2, 3}), tensor(c, {2, 5})); },
                        {"swiglu_forward", "out [2, 3]", "gate_up [2, 5]"});
}
