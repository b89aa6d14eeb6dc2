// Cross-entropy on the CPU: losses and the kept logsumexp against a naive
// log-softmax, the backward (from the forward's logsumexp) against finite
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

template <class T> void check_forward() {
    CpuOps ops;
    Rng rng(1, "cross entropy forward");
    const std::vector<double> x0 = logits(rng);
    std::vector<T> x = cast<T>(x0), losses(N), lse(N), losses_alone(N);
    std::vector<int32_t> tg = targets();
    ops.cross_entropy_forward(tensor(losses, {N}), tensor(lse, {N}), tensor(x, {N, V}), tensor(tg, {N}));
    ops.cross_entropy_forward(tensor(losses_alone, {N}), {}, tensor(x, {N, V}), tensor(tg, {N}));
    std::vector<double> expected(N), expected_lse(N);
    for (int64_t n = 0; n < N; ++n) {
        const double* row = &x0[n * V];
        const double max = *std::max_element(row, row + V);
        double sum = 0;
        for (int64_t i = 0; i < V; ++i) sum += std::exp(row[i] - max);
        expected_lse[n] = max + std::log(sum);
        expected[n] = expected_lse[n] - row[tg[n]];
    }
    require_close("losses", losses, expected, tolerance<T>());
    require_close("lse", lse, expected_lse, tolerance<T>());
    REQUIRE(losses_alone == losses);  // keeping the lse or not changes nothing
}

}  // namespace

TEST_CASE("cross_entropy_forward matches a naive log-softmax", "[unit]") {
    check_forward<float>();
    check_forward<double>();
}

TEST_CASE("cross_entropy_backward matches finite differences and overwrites dlogits", "[unit]") {
    CpuOps ops;
    Rng rng(2, "cross entropy backward");
    std::vector<double> x = normals(N * V, rng, 3.0), losses(N), lse(N);
    std::vector<int32_t> tg = targets();
    auto loss = [&] {
        ops.cross_entropy_forward(tensor(losses, {N}), {}, tensor(x, {N, V}), tensor(tg, {N}));
        double sum = 0;
        for (double l : losses) sum += l;
        return kDloss * sum;
    };
    ops.cross_entropy_forward(tensor(losses, {N}), tensor(lse, {N}), tensor(x, {N, V}), tensor(tg, {N}));
    std::vector<double> dx = normals(N * V, rng);  // stale values, to be overwritten
    ops.cross_entropy_backward(tensor(dx, {N, V}), tensor(x, {N, V}), tensor(lse, {N}), tensor(tg, {N}), kDloss);
    check_gradient("dlogits", loss, x.data(), dx.data(), N * V);
}

TEST_CASE("cross_entropy_backward may write over its logits", "[unit]") {
    CpuOps ops;
    Rng rng(3, "cross entropy aliasing");
    std::vector<float> x = cast<float>(logits(rng)), separate(N * V), losses(N), lse(N);
    std::vector<int32_t> tg = targets();
    ops.cross_entropy_forward(tensor(losses, {N}), tensor(lse, {N}), tensor(x, {N, V}), tensor(tg, {N}));
    ops.cross_entropy_backward(tensor(separate, {N, V}), tensor(x, {N, V}), tensor(lse, {N}), tensor(tg, {N}), kDloss);
    ops.cross_entropy_backward(tensor(x, {N, V}), tensor(x, {N, V}), tensor(lse, {N}), tensor(tg, {N}), kDloss);
    REQUIRE(x == separate);
}

TEST_CASE("cross entropy rejects a target outside the vocabulary", "[unit]") {
    CpuOps ops;
    std::vector<float> x(N * V), losses(N);
    for (int32_t bad : {-1, int32_t(V)}) {
        std::vector<int32_t> tg = targets();
        tg[1] = bad;
        const std::string message = error_of<std::out_of_range>(
            [&] { ops.cross_entropy_forward(tensor(losses, {N}), {}, tensor(x, {N, V}), tensor(tg, {N})); });
        REQUIRE(contains(message, "cross_entropy_forward: target[1] = " + std::to_string(bad)));
    }
    std::vector<int32_t> tg = targets();
    require_logic_error(
        [&] { ops.cross_entropy_forward(tensor(losses, {N}), {}, tensor(x, {V, N}), tensor(tg, {N})); },
        {"cross_entropy_forward", "[7, 4]"});
    std::vector<float> short_lse(N - 1);
    require_logic_error(
        [&] {
            ops.cross_entropy_backward(tensor(x, {N, V}), tensor(x, {N, V}), tensor(short_lse, {N - 1}),
                                       tensor(tg, {N}), kDloss);
        },
        {"cross_entropy_backward", "lse [3]"});
}
