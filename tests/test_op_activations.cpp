// SiLU and SwiGLU on the CPU: forwards against naive formulas (including
// inputs far out on both tails), backwards against finite differences.
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
    std::vector<T> g = cast<T>(g0), u = cast<T>(u0), y(R * I), out(R * I);
    ops.silu_forward(tensor(y, {R, I}), tensor(g, {R, I}));
    ops.swiglu_forward(tensor(out, {R, I}), tensor(g, {R, I}), tensor(u, {R, I}));
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

TEST_CASE("swiglu_backward writes the finite-difference gradients and skips an empty one", "[unit]") {
    CpuOps ops;
    Rng rng(3, "swiglu backward");
    std::vector<double> g = inputs(rng), u = normals(R * I, rng), dout = normals(R * I, rng), out(R * I);
    auto loss = [&] {
        ops.swiglu_forward(tensor(out, {R, I}), tensor(g, {R, I}), tensor(u, {R, I}));
        return dot(dout, out);
    };
    // what the buffers held before is overwritten, not added to
    const std::vector<double> dg0 = normals(R * I, rng), du0 = normals(R * I, rng);
    std::vector<double> dg = dg0, du = du0;
    ops.swiglu_backward(tensor(dg, {R, I}), tensor(du, {R, I}), tensor(dout, {R, I}), tensor(g, {R, I}),
                        tensor(u, {R, I}));
    check_gradient("dgate", loss, g.data(), dg.data(), R * I);
    check_gradient("dup", loss, u.data(), du.data(), R * I);

    std::vector<double> du_alone = du0;
    ops.swiglu_backward({}, tensor(du_alone, {R, I}), tensor(dout, {R, I}), tensor(g, {R, I}), tensor(u, {R, I}));
    REQUIRE(du_alone == du);
}

TEST_CASE("activations reject mismatched shapes", "[unit]") {
    CpuOps ops;
    std::vector<float> a(6), b(5);
    require_logic_error([&] { ops.silu_forward(tensor(a, {2, 3}), tensor(b, {5})); }, {"silu_forward", "[2, 3]", "[5]"});
    require_logic_error([&] { ops.swiglu_forward(tensor(a, {6}), tensor(a, {6}), tensor(b, {5})); },
                        {"swiglu_forward", "[6]", "[5]"});
}
