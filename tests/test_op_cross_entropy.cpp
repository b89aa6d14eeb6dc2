// Cross-entropy on the CPU: losses against a naive log-softmax (the same
// with the gradient made in the pass or not), the gradient against finite
// differences, in place over the logits, and bad targets and shapes.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int64_t N = 4, V = 7;
constexpr double kDloss = 0.37;

std::vector<int32_t> targets() { return {3, 0, 6, 3}; }

std::vector<double> logits(Rng& rng) {
    std::vector<double> x = normals(N * V, rng, 3.0);
    x[2 * V + 1] = 1000;  // exp(1000) overflows: the row must be shifted by its max
    return x;
}

template <class T> void check_losses() {
    CpuOps ops;
    Rng rng(1, "cross entropy forward");
    const std::vector<double> x0 = logits(rng);
    std::vector<T> x = cast<T>(x0), losses(N), losses_with_grad(N), dx(N * V);
    std::vector<int32_t> tg = targets();
    ops.cross_entropy(tensor(losses, {N}), {}, tensor(x, {N, V}), tensor(tg, {N}), 0);
    ops.cross_entropy(tensor(losses_with_grad, {N}), tensor(dx, {N, V}), tensor(x, {N, V}), tensor(tg, {N}), kDloss);
    std::vector<double> expected(N);
    for (int64_t n = 0; n < N; ++n) {
        const double* row = &x0[n * V];
        const double max = *std::max_element(row, row + V);
        double sum = 0;
        for (int64_t i = 0; i < V; ++i) sum += std::exp(row[i] - max);
        expected[n] = max + std::log(sum) - row[tg[n]];
    }
    require_close("losses", losses, expected, tolerance<T>());
    REQUIRE(losses_with_grad == losses);  // making the gradient too changes nothing
}

}  // namespace

TEST_CASE("cross_entropy losses match a naive log-softmax", "[unit]") {
    check_losses<float>();
    check_losses<double>();
}

TEST_CASE("cross_entropy's gradient matches finite differences and overwrites dlogits", "[unit]") {
    CpuOps ops;
    Rng rng(2, "cross entropy backward");
    std::vector<double> x = normals(N * V, rng, 3.0), losses(N);
    std::vector<int32_t> tg = targets();
    auto loss = [&] {
        ops.cross_entropy(tensor(losses, {N}), {}, tensor(x, {N, V}), tensor(tg, {N}), 0);
        double sum = 0;
        for (double l : losses) sum += l;
        return kDloss * sum;
    };
    std::vector<double> dx = normals(N * V, rng);  // stale values, to be overwritten
    ops.cross_entropy(tensor(losses, {N}), tensor(dx, {N, V}), tensor(x, {N, V}), tensor(tg, {N}), kDloss);
    check_gradient("dlogits", loss, x.data(), dx.data(), N * V);
}

TEST_CASE("cross_entropy may write the gradient over its logits", "[unit]") {
    CpuOps ops;
    Rng rng(3, "cross entropy aliasing");
    std::vector<float> x = cast<float>(logits(rng)), separate(N * V), losses(N), losses_in_place(N);
    std::vector<int32_t> tg = targets();
    ops.cross_entropy(tensor(losses, {N}), tensor(separate, {N, V}), tensor(x, {N, V}), tensor(tg, {N}), kDloss);
    ops.cross_entropy(tensor(losses_in_place, {N}), tensor(x, {N, V}), tensor(x, {N, V}), tensor(tg, {N}), kDloss);
    REQUIRE(x == separate);
    REQUIRE(losses_in_place == losses);
}

TEST_CASE("cross entropy rejects a target outside the vocabulary", "[unit]") {
    CpuOps ops;
    std::vector<float> x(N * V), losses(N);
    for (int32_t bad : {-1, int32_t(V)}) {
        std::vector<int32_t> tg = targets();
        tg[1] = bad;
        const std::string message = error_of<std::out_of_range>(
            [&] { ops.cross_entropy(tensor(losses, {N}), {}, tensor(x, {N, V}), tensor(tg, {N}), 0); });
        REQUIRE(contains(message, "cross_entropy: target[1] = " + std::to_string(bad)));
    }
    std::vector<int32_t> tg = targets();
    require_logic_error([&] { ops.cross_entropy(tensor(losses, {N}), {}, tensor(x, {V, N}), tensor(tg, {N}), 0); },
                        {"cross_entropy", "[7, 4]"});
    std::vector<float> short_dx(N * V - 1);
    require_logic_error(
        [&] {
            ops.cross_entropy(tensor(losses, {N}), tensor(short_dx, {N * V - 1}), tensor(x, {N, V}), tensor(tg, {N}),
                              kDloss);
        },
        {"cross_entropy", "[27]"});
}
