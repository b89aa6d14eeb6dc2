// CPU memory, elementwise and reduction ops and the column concat (cpu/memory.cpp):
// against naive loops, with shape errors that name the op.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/parallel.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

template <class T> void check_add_and_scale() {
    CpuOps ops;
    Rng rng(1, "add scale");
    const std::vector<double> x0 = normals(11, rng), y0 = normals(11, rng);
    std::vector<T> x = cast<T>(x0), y = cast<T>(y0);
    ops.add(tensor(y, {11}), tensor(x, {11}), -0.75);
    std::vector<double> expected(11);
    for (int i = 0; i < 11; ++i) expected[i] = y0[i] - 0.75 * x0[i];
    require_close("add", y, expected, tolerance<T>());
    ops.scale(tensor(y, {11}), 3.0);
    for (double& e : expected) e *= 3.0;
    require_close("scale", y, expected, tolerance<T>());
    // y = a + b over whatever y held; exact: one rounding of the same sum.
    const std::vector<T> a = cast<T>(normals(11, rng)), b = cast<T>(normals(11, rng));
    std::vector<T> ca = a, cb = b;
    ops.add_tensors(tensor(y, {11}), tensor(ca, {11}), tensor(cb, {11}));
    for (int i = 0; i < 11; ++i) REQUIRE(y[i] == T(a[i] + b[i]));
}

}  // namespace

TEST_CASE("alloc gives zero-filled memory aligned to 256 bytes", "[unit]") {
    CpuOps ops;
    for (size_t bytes : {size_t(0), size_t(1), size_t(1000), size_t(4096)}) {
        auto* p = static_cast<unsigned char*>(ops.alloc(bytes));
        REQUIRE(p != nullptr);
        REQUIRE(reinterpret_cast<uintptr_t>(p) % 256 == 0);
        for (size_t i = 0; i < bytes; ++i) REQUIRE(p[i] == 0);
        ops.release(p);
    }
}

TEST_CASE("host copies, zero and copy move whole tensors", "[unit]") {
    CpuOps ops;
    const std::vector<float> host = {1.5f, -2.f, 3.25f, 4.f, 5.f, -6.5f};
    auto* buffer = static_cast<float*>(ops.alloc(host.size() * sizeof(float)));
    const Tensor t(buffer, DType::F32, {2, 3});
    ops.copy_from_host(t, host.data());
    std::vector<float> back(6);
    ops.copy_to_host(back.data(), t);
    REQUIRE(back == host);

    std::vector<float> other(6, 9.f);
    ops.copy(tensor(other, {3, 2}), t);  // same element count, another shape
    REQUIRE(other == host);
    ops.zero(t);
    ops.copy_to_host(back.data(), t);
    REQUIRE(back == std::vector<float>(6, 0.f));
    ops.release(buffer);
}

TEST_CASE("add, add_tensors and scale match naive loops", "[unit]") {
    check_add_and_scale<float>();
    check_add_and_scale<double>();
}

TEST_CASE("sum and sum_squares are double sums that do not depend on the thread count", "[unit]") {
    CpuOps ops;
    Rng rng(3, "sums");
    // Long enough to span many chunks and threads, and not a multiple of any chunk size.
    const int64_t n = 300007;
    REQUIRE(worth_threads(n));
    std::vector<float> x = cast<float>(normals(n, rng));
    double sum = 0, squares = 0;
    for (float v : x) {
        sum += v;
        squares += double(v) * v;
    }
    auto sums = [&] { return std::vector<double>{ops.sum(tensor(x, {n})), ops.sum_squares({tensor(x, {n})})[0]}; };
    const std::vector<double> got = sums();
    REQUIRE(got[0] == Approx(sum).epsilon(1e-12).margin(1e-9));
    REQUIRE(got[1] == Approx(squares).epsilon(1e-12));
    require_same_for_1_and_2_threads(sums);

    std::vector<double> small = {1, -2, 3};
    REQUIRE(ops.sum(tensor(small, {3})) == 2);
    std::vector<double> empty;
    // several tensors at once: each its own sum, in order; an empty one sums to 0
    REQUIRE(ops.sum_squares({tensor(small, {3}), tensor(empty, {0}), tensor(x, {n})}) ==
            std::vector<double>{14, 0, got[1]});
}

TEST_CASE("mismatched shapes throw a logic_error naming the op and the shapes", "[unit]") {
    CpuOps ops;
    std::vector<float> a(6), b(4);
    require_logic_error([&] { ops.add(tensor(a, {2, 3}), tensor(b, {2, 2})); }, {"add", "[2, 3]", "[2, 2]"});
    require_logic_error([&] { ops.copy(tensor(a, {6}), tensor(b, {4})); }, {"copy", "[6]", "[4]"});
    require_logic_error([&] { ops.add_tensors(tensor(a, {6}), tensor(a, {6}), tensor(b, {4})); },
                        {"add_tensors", "[6]", "[4]"});
}
