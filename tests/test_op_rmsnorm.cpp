// RMSNorm on the CPU: the forward against a naive loop, the backward against
// central finite differences in double.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int R = 5, D = 7;
constexpr double kEps = 1e-6;

template <class T> void check_forward() {
    CpuOps ops;
    Rng rng(1, "rmsnorm forward");
    const std::vector<double> x0 = normals(R * D, rng, 2.0), w0 = normals(D, rng);
    std::vector<T> x = cast<T>(x0), w = cast<T>(w0), y(R * D), rstd(R);
    // Leading dims are rows: x [1, R, D] normalises each of the R rows.
    ops.rmsnorm_forward(tensor(y, {1, R, D}), tensor(rstd, {R}), tensor(x, {1, R, D}), tensor(w, {D}), kEps);
    std::vector<double> expected_y(R * D), expected_rstd(R);
    for (int r = 0; r < R; ++r) {
        double ss = 0;
        for (int i = 0; i < D; ++i) ss += x0[r * D + i] * x0[r * D + i];
        expected_rstd[r] = 1 / std::sqrt(ss / D + kEps);
        for (int i = 0; i < D; ++i) expected_y[r * D + i] = x0[r * D + i] * expected_rstd[r] * w0[i];
    }
    require_close("rstd", rstd, expected_rstd, tolerance<T>());
    require_close("y", y, expected_y, tolerance<T>());
}

}  // namespace

TEST_CASE("rmsnorm_forward matches a naive loop", "[unit]") {
    check_forward<float>();
    check_forward<double>();
}

TEST_CASE("rmsnorm_backward matches finite differences, accumulates and overwrites", "[unit]") {
    CpuOps ops;
    Rng rng(2, "rmsnorm backward");
    std::vector<double> x = normals(R * D, rng), w = normals(D, rng), dy = normals(R * D, rng);
    std::vector<double> y(R * D), rstd(R);
    auto forward = [&] {
        ops.rmsnorm_forward(tensor(y, {R, D}), tensor(rstd, {R}), tensor(x, {R, D}), tensor(w, {D}), kEps);
        return dot(dy, y);
    };
    forward();
    const std::vector<double> dx0 = normals(R * D, rng), dw0 = normals(D, rng);
    std::vector<double> dx = dx0, dw = dw0;
    ops.rmsnorm_backward(tensor(dx, {R, D}), tensor(dw, {D}), tensor(dy, {R, D}), tensor(x, {R, D}), tensor(w, {D}),
                         tensor(rstd, {R}), Write::add, Write::add);
    const std::vector<double> grad_x = accumulated(dx, dx0), grad_w = accumulated(dw, dw0);
    check_gradient("dx", forward, x.data(), grad_x.data(), R * D);
    check_gradient("dw", forward, w.data(), grad_w.data(), D);

    // Without dx, dw is the same (from rstd of the unperturbed inputs).
    forward();
    std::vector<double> dw_alone = dw0;
    ops.rmsnorm_backward({}, tensor(dw_alone, {D}), tensor(dy, {R, D}), tensor(x, {R, D}), tensor(w, {D}),
                         tensor(rstd, {R}), Write::add, Write::add);
    REQUIRE(dw_alone == dw);

    // Overwritten, each is the gradient alone.
    std::vector<double> dx_over = normals(R * D, rng), dw_over = normals(D, rng);
    ops.rmsnorm_backward(tensor(dx_over, {R, D}), tensor(dw_over, {D}), tensor(dy, {R, D}), tensor(x, {R, D}),
                         tensor(w, {D}), tensor(rstd, {R}), Write::overwrite, Write::overwrite);
    for (int64_t i = 0; i < R * D; ++i) REQUIRE(dx_over[i] == Approx(grad_x[i]).margin(1e-12));
    for (int64_t i = 0; i < D; ++i) REQUIRE(dw_over[i] == Approx(grad_w[i]).margin(1e-12));
}

TEST_CASE("rmsnorm rejects mismatched shapes", "[unit]") {
    CpuOps ops;
    std::vector<float> x(R * D), y(R * D), w(D + 1), rstd(R);
    require_logic_error(
        [&] { ops.rmsnorm_forward(tensor(y, {R, D}), tensor(rstd, {R}), tensor(x, {R, D}), tensor(w, {D + 1}), kEps); },
        {"rmsnorm_forward", "[5, 7]", "[8]"});
}
