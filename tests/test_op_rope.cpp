// RoPE on the CPU: the forward against a naive rotate-half loop, from a first
// position too, on some heads of each position's row as on those heads apart,
// the backward as the inverse rotation and as the gradient (finite
// differences).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int64_t B = 2, T = 5, H = 3, HD = 6, kN = B * T * H * HD;
constexpr double kTheta = 10000;

// Hugging Face Llama: x' = x cos + rotate_half(x) sin, rotate_half(a, b) = (-b, a).
std::vector<double> naive_rope(const std::vector<double>& x) {
    std::vector<double> y(x.size());
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t h = 0; h < H; ++h) {
                const double* v = &x[((b * T + t) * H + h) * HD];
                double* o = &y[((b * T + t) * H + h) * HD];
                for (int64_t j = 0; j < HD; ++j) {
                    const int64_t i = j % (HD / 2);  // the frequency index of column j
                    const double angle = double(t) / std::pow(kTheta, 2.0 * double(i) / HD);
                    const double rotated = j < HD / 2 ? -v[j + HD / 2] : v[j - HD / 2];
                    o[j] = v[j] * std::cos(angle) + rotated * std::sin(angle);
                }
            }
    return y;
}

template <class T_> void check_forward() {
    CpuOps ops;
    Rng rng(1, "rope forward");
    const std::vector<double> x0 = normals(kN, rng);
    std::vector<T_> x = cast<T_>(x0);
    ops.rope_forward(tensor(x, {B, T, H, HD}), kTheta, 0);
    const std::vector<double> expected = naive_rope(x0);
    require_close("rope", x, expected, tolerance<T_>());
    // Position 0 does not turn.
    for (int64_t i = 0; i < H * HD; ++i) REQUIRE(x[i] == T_(x0[i]));
}

}  // namespace

TEST_CASE("rope_forward matches a naive rotate-half loop", "[unit]") {
    check_forward<float>();
    check_forward<double>();
}

TEST_CASE("rope_forward from a first position turns rows as the positions after it", "[unit]") {
    // The rows from t0 on, rotated alone from position t0, equal the same rows
    // of the whole sequence rotated from 0, bit for bit (a decoder's new rows).
    CpuOps ops;
    Rng rng(4, "rope offset");
    const std::vector<float> x0 = cast<float>(normals(T * H * HD, rng));
    std::vector<float> whole = x0;
    ops.rope_forward(tensor(whole, {1, T, H, HD}), kTheta, 0);
    for (int64_t t0 = 0; t0 < T; ++t0) {
        std::vector<float> tail(x0.begin() + t0 * H * HD, x0.end());
        ops.rope_forward(tensor(tail, {1, T - t0, H, HD}), kTheta, t0);
        REQUIRE(std::equal(tail.begin(), tail.end(), whole.begin() + t0 * H * HD));
    }
}

TEST_CASE("rope_forward on heads of each position's row turns them as it turns them apart", "[unit]") {
    // Heads 1..2 of rows of 4 (as q and k lie in the stacked projection's
    // rows); the other heads stay as they were.
    CpuOps ops;
    Rng rng(6, "rope heads");
    constexpr int64_t kRow = 4, kFirst = 1, kCount = 2;
    const std::vector<double> rows = normals(B * T * kRow * HD, rng);
    std::vector<double> packed = rows, apart(B * T * kCount * HD);
    for (int64_t p = 0; p < B * T; ++p)
        std::copy_n(&rows[(p * kRow + kFirst) * HD], kCount * HD, &apart[p * kCount * HD]);
    ops.rope_forward(Heads(tensor(packed, {B, T, kRow, HD}), kFirst, kCount), kTheta, 2);
    ops.rope_forward(tensor(apart, {B, T, kCount, HD}), kTheta, 2);
    for (int64_t p = 0; p < B * T; ++p)
        for (int64_t h = 0; h < kRow; ++h)
            for (int64_t i = 0; i < HD; ++i) {
                const int64_t at = (p * kRow + h) * HD + i;
                if (h < kFirst || h >= kFirst + kCount)
                    REQUIRE(packed[at] == rows[at]);
                else
                    REQUIRE(packed[at] == apart[(p * kCount + h - kFirst) * HD + i]);
            }
    REQUIRE(packed[kFirst * HD] != rows[kFirst * HD]);  // the first row is at position 2: it turns
}

TEST_CASE("rope_backward undoes rope_forward", "[unit]") {
    CpuOps ops;
    Rng rng(2, "rope inverse");
    const std::vector<double> x0 = normals(kN, rng);
    std::vector<double> x = x0;
    ops.rope_forward(tensor(x, {B, T, H, HD}), kTheta, 0);
    ops.rope_backward(tensor(x, {B, T, H, HD}), kTheta);
    require_close("x", x, x0, 1e-14);
}

TEST_CASE("rope_backward is the gradient of rope_forward", "[unit]") {
    CpuOps ops;
    Rng rng(3, "rope backward");
    std::vector<double> x = normals(kN, rng), dy = normals(kN, rng);
    auto loss = [&] {
        std::vector<double> y = x;
        ops.rope_forward(tensor(y, {B, T, H, HD}), kTheta, 0);
        return dot(dy, y);
    };
    std::vector<double> dx = dy;  // in place: dy becomes dx
    ops.rope_backward(tensor(dx, {B, T, H, HD}), kTheta);
    check_gradient("dx", loss, x.data(), dx.data(), kN);
}

TEST_CASE("rope rejects a head size that does not split in halves", "[unit]") {
    CpuOps ops;
    std::vector<float> x(2 * 3 * 5);
    require_logic_error([&] { ops.rope_forward(tensor(x, {1, 2, 3, 5}), kTheta, 0); },
                        {"rope_forward", "[1, 2, 3, 5]"});
    require_logic_error([&] { ops.rope_backward(tensor(x, {6, 5}), kTheta); }, {"rope_backward", "[6, 5]"});
}
