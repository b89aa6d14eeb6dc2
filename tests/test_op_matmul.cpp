// Linear, grouped (per-expert) linear and concatenation linear layers on the
// CPU: forwards against naive loops, backwards against central finite differences in double, and
// results that do not depend on the thread count. Sizes are odd so that both
// the register tiles and the partial tiles at the edges are exercised.
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/parallel.h"
#include "tests/gradcheck.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

// y[N,O] = x[N,I] w[O,I]^T (+ b), in double.
std::vector<double> naive_linear(const std::vector<double>& x, const std::vector<double>& w,
                                 const std::vector<double>* b, int64_t N, int64_t O, int64_t I) {
    std::vector<double> y(N * O);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < O; ++o) {
            double s = b ? (*b)[o] : 0;
            for (int64_t i = 0; i < I; ++i) s += x[n * I + i] * w[o * I + i];
            y[n * O + o] = s;
        }
    return y;
}

template <class T> void check_forward(int64_t N, int64_t O, int64_t I) {
    CpuOps ops;
    Rng rng(1, "matmul forward");
    const std::vector<double> x0 = normals(N * I, rng), w0 = normals(O * I, rng), b0 = normals(O, rng);
    std::vector<T> x = cast<T>(x0), w = cast<T>(w0), b = cast<T>(b0), y = cast<T>(normals(N * O, rng));
    ops.matmul_forward(tensor(y, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}), {});  // overwrites y
    require_close("y", y, naive_linear(x0, w0, nullptr, N, O, I), tolerance<T>());
    ops.matmul_forward(tensor(y, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}), tensor(b, {O}));
    require_close("y + b", y, naive_linear(x0, w0, &b0, N, O, I), tolerance<T>());
}

// Expert-sorted rows: expert 1 gets none.
const std::vector<int64_t> kOffsets = {0, 3, 3, 8, 9};
constexpr int64_t kE = 4, kR = 9;

template <class T> void check_grouped_forward(int64_t O, int64_t I) {
    CpuOps ops;
    Rng rng(2, "grouped forward");
    const std::vector<double> x0 = normals(kR * I, rng), w0 = normals(kE * O * I, rng);
    std::vector<T> x = cast<T>(x0), w = cast<T>(w0), y(kR * O);
    ops.grouped_matmul_forward(tensor(y, {kR, O}), tensor(x, {kR, I}), tensor(w, {kE, O, I}), kOffsets);
    std::vector<double> expected;
    for (int64_t e = 0; e < kE; ++e) {
        const int64_t lo = kOffsets[e], hi = kOffsets[e + 1];
        const std::vector<double> xe(x0.begin() + lo * I, x0.begin() + hi * I);
        const std::vector<double> we(w0.begin() + e * O * I, w0.begin() + (e + 1) * O * I);
        const std::vector<double> ye = naive_linear(xe, we, nullptr, hi - lo, O, I);
        expected.insert(expected.end(), ye.begin(), ye.end());
    }
    require_close("y", y, expected, tolerance<T>());
}

}  // namespace

TEST_CASE("matmul_forward matches a naive loop, with and without bias", "[unit]") {
    check_forward<float>(9, 37, 13);
    check_forward<double>(9, 37, 13);
    check_forward<float>(8, 32, 64);  // whole tiles only
    check_forward<float>(3, 5, 1);    // edges only
}

TEST_CASE("matmul_residual_forward is the residual plus matmul_forward's product, bit for bit", "[unit]") {
    const int64_t N = 9, O = 37, I = 13;
    CpuOps ops;
    Rng rng(7, "matmul residual");
    std::vector<float> x = cast<float>(normals(N * I, rng)), w = cast<float>(normals(O * I, rng));
    const std::vector<float> residual = cast<float>(normals(N * O, rng));
    std::vector<float> product(N * O), y(N * O), r = residual;
    ops.matmul_forward(tensor(product, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}), {});
    ops.matmul_residual_forward(tensor(y, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}), tensor(r, {N, O}));
    for (int64_t i = 0; i < N * O; ++i) REQUIRE(y[i] == residual[i] + product[i]);
    REQUIRE(r == residual);  // read, not written
    require_logic_error(
        [&] { ops.matmul_residual_forward(tensor(y, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}), tensor(r, {O})); },
        {"matmul_residual_forward", "[37]"});
}

TEST_CASE("matmul_backward matches finite differences, accumulates and overwrites", "[unit]") {
    const int64_t N = 6, O = 19, I = 5;
    CpuOps ops;
    Rng rng(3, "matmul backward");
    std::vector<double> x = normals(N * I, rng), w = normals(O * I, rng), b = normals(O, rng);
    std::vector<double> dy = normals(N * O, rng), y(N * O);
    auto loss = [&] {
        ops.matmul_forward(tensor(y, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}), tensor(b, {O}));
        return dot(dy, y);
    };
    const std::vector<double> dx0 = normals(N * I, rng), dw0 = normals(O * I, rng), db0 = normals(O, rng);
    std::vector<double> dx = dx0, dw = dw0, db = db0;
    ops.matmul_backward(tensor(dx, {N, I}), tensor(dw, {O, I}), tensor(db, {O}), tensor(dy, {N, O}),
                        tensor(x, {N, I}), tensor(w, {O, I}), Write::add, Write::add);
    const std::vector<double> grad_x = accumulated(dx, dx0), grad_w = accumulated(dw, dw0),
                              grad_b = accumulated(db, db0);
    check_gradient("dx", loss, x.data(), grad_x.data(), N * I);
    check_gradient("dw", loss, w.data(), grad_w.data(), O * I);
    check_gradient("db", loss, b.data(), grad_b.data(), O);

    // Empty gradients are skipped; the others come out the same.
    std::vector<double> dw_alone = dw0;
    ops.matmul_backward({}, tensor(dw_alone, {O, I}), {}, tensor(dy, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}),
                        Write::add, Write::add);
    REQUIRE(dw_alone == dw);

    // Overwriting dx, then dw and db: what they held is gone, the other kind
    // of gradient still accumulates.
    std::vector<double> dx_over = normals(N * I, rng), dw_over = normals(O * I, rng), db_over = normals(O, rng);
    std::vector<double> dw_kept = dw0, dx_kept = dx0;
    ops.matmul_backward(tensor(dx_over, {N, I}), tensor(dw_kept, {O, I}), {}, tensor(dy, {N, O}), tensor(x, {N, I}),
                        tensor(w, {O, I}), Write::overwrite, Write::add);
    ops.matmul_backward(tensor(dx_kept, {N, I}), tensor(dw_over, {O, I}), tensor(db_over, {O}), tensor(dy, {N, O}),
                        tensor(x, {N, I}), tensor(w, {O, I}), Write::add, Write::overwrite);
    for (int64_t i = 0; i < N * I; ++i) REQUIRE(dx_over[i] == Approx(grad_x[i]).margin(1e-12));
    for (int64_t i = 0; i < O * I; ++i) REQUIRE(dw_over[i] == Approx(grad_w[i]).margin(1e-12));
    for (int64_t i = 0; i < O; ++i) REQUIRE(db_over[i] == Approx(grad_b[i]).margin(1e-12));
    REQUIRE(dw_kept == dw);
    REQUIRE(dx_kept == dx);
}

TEST_CASE("concat_matmul is the linear of the concatenated rows, forward and backward", "[unit]") {
    const int64_t N = 7, A = 5, B = 11, O = 9;  // odd widths: edge tiles, and b's block starts mid-row
    CpuOps ops;
    Rng rng(7, "concat matmul");
    std::vector<double> a = normals(N * A, rng), b = normals(N * B, rng), w = normals(O * (A + B), rng);
    std::vector<double> bias = normals(O, rng), dy = normals(N * O, rng), y = normals(N * O, rng);
    // The forward against a naive linear of [a | b], the bias optional.
    std::vector<double> ab;
    for (int64_t n = 0; n < N; ++n) {
        ab.insert(ab.end(), a.begin() + n * A, a.begin() + (n + 1) * A);
        ab.insert(ab.end(), b.begin() + n * B, b.begin() + (n + 1) * B);
    }
    ops.concat_matmul_forward(tensor(y, {N, O}), tensor(a, {N, A}), tensor(b, {N, B}), tensor(w, {O, A + B}), {});
    require_close("y", y, naive_linear(ab, w, nullptr, N, O, A + B), 1e-12);
    auto loss = [&] {
        ops.concat_matmul_forward(tensor(y, {N, O}), tensor(a, {N, A}), tensor(b, {N, B}), tensor(w, {O, A + B}),
                                  tensor(bias, {O}));
        return dot(dy, y);
    };
    loss();
    require_close("y + bias", y, naive_linear(ab, w, &bias, N, O, A + B), 1e-12);

    // The backward adds to what the gradients hold, against finite differences.
    const std::vector<double> da0 = normals(N * A, rng), db0 = normals(N * B, rng), dw0 = normals(O * (A + B), rng),
                              dbias0 = normals(O, rng);
    std::vector<double> da = da0, db = db0, dw = dw0, dbias = dbias0;
    ops.concat_matmul_backward(tensor(da, {N, A}), tensor(db, {N, B}), tensor(dw, {O, A + B}), tensor(dbias, {O}),
                               tensor(dy, {N, O}), tensor(a, {N, A}), tensor(b, {N, B}), tensor(w, {O, A + B}),
                               Write::add, Write::add);
    const std::vector<double> grad_a = accumulated(da, da0), grad_b = accumulated(db, db0),
                              grad_w = accumulated(dw, dw0), grad_bias = accumulated(dbias, dbias0);
    check_gradient("da", loss, a.data(), grad_a.data(), N * A);
    check_gradient("db", loss, b.data(), grad_b.data(), N * B);
    check_gradient("dw", loss, w.data(), grad_w.data(), O * (A + B));
    check_gradient("dbias", loss, bias.data(), grad_bias.data(), O);

    // Overwriting: what the gradients held is gone; an empty one is skipped.
    std::vector<double> da_over = normals(N * A, rng), dw_over = normals(O * (A + B), rng),
                        dbias_over = normals(O, rng);
    ops.concat_matmul_backward(tensor(da_over, {N, A}), {}, tensor(dw_over, {O, A + B}), tensor(dbias_over, {O}),
                               tensor(dy, {N, O}), tensor(a, {N, A}), tensor(b, {N, B}), tensor(w, {O, A + B}),
                               Write::overwrite, Write::overwrite);
    require_close("da overwritten", da_over, grad_a, 1e-12);
    require_close("dw overwritten", dw_over, grad_w, 1e-12);
    require_close("dbias overwritten", dbias_over, grad_bias, 1e-12);
}

TEST_CASE("grouped_matmul_forward runs each expert over its rows, skipping an empty expert", "[unit]") {
    check_grouped_forward<float>(17, 6);
    check_grouped_forward<double>(17, 6);
}

TEST_CASE("grouped_matmul_backward matches finite differences, and an empty expert gets no weight gradient",
          "[unit]") {
    const int64_t O = 5, I = 7;
    CpuOps ops;
    Rng rng(4, "grouped backward");
    std::vector<double> x = normals(kR * I, rng), w = normals(kE * O * I, rng), dy = normals(kR * O, rng);
    std::vector<double> y(kR * O);
    auto loss = [&] {
        ops.grouped_matmul_forward(tensor(y, {kR, O}), tensor(x, {kR, I}), tensor(w, {kE, O, I}), kOffsets);
        return dot(dy, y);
    };
    const std::vector<double> dx0 = normals(kR * I, rng), dw0 = normals(kE * O * I, rng);
    std::vector<double> dx = dx0, dw = dw0;
    ops.grouped_matmul_backward(tensor(dx, {kR, I}), tensor(dw, {kE, O, I}), tensor(dy, {kR, O}),
                                tensor(x, {kR, I}), tensor(w, {kE, O, I}), kOffsets, Write::add, Write::add);
    const std::vector<double> grad_w = accumulated(dw, dw0), grad_x = accumulated(dx, dx0);
    check_gradient("dx", loss, x.data(), grad_x.data(), kR * I);
    check_gradient("dw", loss, w.data(), grad_w.data(), kE * O * I, 1e-6, 1e-9, kE * O * I);
    for (int64_t j = O * I; j < 2 * O * I; ++j) REQUIRE(grad_w[j] == 0);  // expert 1: no rows

    // Overwriting dx: what it held is gone; dw still accumulates.
    std::vector<double> dx_over = normals(kR * I, rng), dw_again = dw0;
    ops.grouped_matmul_backward(tensor(dx_over, {kR, I}), tensor(dw_again, {kE, O, I}), tensor(dy, {kR, O}),
                                tensor(x, {kR, I}), tensor(w, {kE, O, I}), kOffsets, Write::overwrite, Write::add);
    for (int64_t i = 0; i < kR * I; ++i) REQUIRE(dx_over[i] == Approx(grad_x[i]).margin(1e-12));
    REQUIRE(dw_again == dw);

    // Overwriting dw: every expert's slice is written, the empty one's with zeros.
    std::vector<double> dw_over = normals(kE * O * I, rng);
    ops.grouped_matmul_backward({}, tensor(dw_over, {kE, O, I}), tensor(dy, {kR, O}), tensor(x, {kR, I}),
                                tensor(w, {kE, O, I}), kOffsets, Write::add, Write::overwrite);
    for (int64_t j = 0; j < kE * O * I; ++j) REQUIRE(dw_over[j] == Approx(grad_w[j]).margin(1e-12));
}

TEST_CASE("matmul results do not depend on the thread count", "[unit]") {
    const int64_t N = 45, O = 41, I = 67;
    REQUIRE(worth_threads(N * O * I));  // the threads do split the work
    CpuOps ops;
    Rng rng(5, "matmul threads");
    std::vector<float> x = cast<float>(normals(N * I, rng)), w = cast<float>(normals(O * I, rng));
    std::vector<float> b = cast<float>(normals(O, rng)), dy = cast<float>(normals(N * O, rng));
    require_same_for_1_and_2_threads([&] {
        std::vector<float> y(N * O), dx(N * I), dw(O * I), db(O);
        ops.matmul_forward(tensor(y, {N, O}), tensor(x, {N, I}), tensor(w, {O, I}), tensor(b, {O}));
        ops.matmul_backward(tensor(dx, {N, I}), tensor(dw, {O, I}), tensor(db, {O}), tensor(dy, {N, O}),
                            tensor(x, {N, I}), tensor(w, {O, I}), Write::add, Write::add);
        return std::vector<std::vector<float>>{y, dx, dw, db};
    });
}

TEST_CASE("matmul rejects mismatched shapes and offsets", "[unit]") {
    CpuOps ops;
    std::vector<float> x(12), w(15), y(20), b(4), w3(2 * 5 * 3);
    require_logic_error([&] { ops.matmul_forward(tensor(y, {4, 5}), tensor(x, {4, 3}), tensor(w, {3, 5}), {}); },
                        {"matmul_forward", "[4, 3]", "[3, 5]"});
    require_logic_error(
        [&] { ops.matmul_forward(tensor(y, {4, 5}), tensor(x, {4, 3}), tensor(w, {5, 3}), tensor(b, {4})); },
        {"matmul_forward", "bias [4]"});
    require_logic_error(
        [&] { ops.grouped_matmul_forward(tensor(y, {4, 5}), tensor(x, {4, 3}), tensor(w3, {2, 5, 3}), {0, 2, 3}); },
        {"grouped_matmul_forward", "offsets"});
    std::vector<float> a(8), wc(5 * 6);
    require_logic_error(
        [&] {
            ops.concat_matmul_forward(tensor(y, {4, 5}), tensor(x, {4, 3}), tensor(a, {4, 2}), tensor(wc, {5, 6}), {});
        },
        {"concat_matmul_forward", "a [4, 3]", "b [4, 2]", "w [5, 6]"});
}
