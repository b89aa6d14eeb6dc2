// The CUDA backend's elementwise ops against the CPU ops: copies with their
// F32 <-> BF16 conversion, add, scale, add_tensors, the reductions sum and
// sum_squares.
#include <tuple>

#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

TEST_CASE("copy converts F32 <-> BF16 with round-to-nearest, add and scale compute in fp32", "[gpu]") {
    Backends b;
    Rng rng(1, "elementwise");
    const int64_t n = 1000;
    std::vector<float> x(n);
    for (float& v : x) v = float(rng.normal());
    Tensor f32 = b.upload(x, DType::F32, {n}), h = b.zeros(DType::BF16, {n}), back = b.zeros(DType::F32, {n});
    b.gpu.copy(h, f32);
    b.gpu.copy(back, h);
    const std::vector<float> rounded = b.download(back);
    for (int64_t i = 0; i < n; ++i) REQUIRE(rounded[size_t(i)] == round_bf16(x[size_t(i)]));

    std::vector<float> y = bf16_normals(n, rng), d = bf16_normals(n, rng);
    Tensor gy = b.upload(y, DType::BF16, {n}), gd = b.upload(d, DType::BF16, {n});
    b.gpu.add(gy, gd, 0.5);
    b.gpu.scale(gy, -2.0);
    std::vector<float> expected(n);
    for (int64_t i = 0; i < n; ++i)
        expected[size_t(i)] = round_bf16(-2.0f * round_bf16(y[size_t(i)] + 0.5f * d[size_t(i)]));
    REQUIRE(b.download(gy) == expected);

    // add_tensors: y = a + b rounded once, in 16-byte chunks (n = 1000) and
    // element by element (an odd count, an offset start); F32 as well.
    for (auto [count, offset, dt] : {std::tuple<int64_t, int64_t, DType>{n, 0, DType::BF16}, {n - 3, 1, DType::BF16},
                                      {n, 0, DType::F32}}) {
        INFO("n " << count << ", offset " << offset << ", " << dtype_name(dt));
        Tensor ga = b.upload(y, dt, {n}), gb = b.upload(d, dt, {n}), gs = b.upload(x, dt, {n});
        const auto part = [&](Tensor t) { return t.view({n}).rows(offset, offset + count); };
        b.gpu.add_tensors(part(gs), part(ga), part(gb));
        const std::vector<float> got = b.download(gs);
        for (int64_t i = 0; i < n; ++i) {
            const bool in = i >= offset && i < offset + count;
            const float want = in ? y[size_t(i)] + d[size_t(i)] : x[size_t(i)];
            REQUIRE(got[size_t(i)] == (dt == DType::BF16 ? round_bf16(want) : want));
        }
    }
}

TEST_CASE("sum and sum_squares match the CPU and repeat bit for bit", "[gpu]") {
    Backends b;
    Rng rng(2, "sums");
    for (int64_t n : {int64_t(1), int64_t(4097), int64_t(3) << 20}) {
        std::vector<float> x(static_cast<size_t>(n));
        for (float& v : x) v = float(rng.normal());
        Tensor g = b.upload(x, DType::F32, {n});
        Tensor c = host_tensor(x, {n});
        const double s = b.gpu.sum(g), ss = b.gpu.sum_squares({g})[0];
        REQUIRE(s == Approx(b.cpu.sum(c)).epsilon(1e-9).margin(1e-9));
        REQUIRE(ss == Approx(b.cpu.sum_squares({c})[0]).epsilon(1e-9));
        REQUIRE(b.gpu.sum(g) == s);
        REQUIRE(b.gpu.sum_squares({g})[0] == ss);
        if (n < 2) continue;
        // From the second element: not on 16 bytes, so element by element.
        const Tensor g1(static_cast<float*>(g.data) + 1, DType::F32, {n - 1});
        const Tensor c1(static_cast<float*>(c.data) + 1, DType::F32, {n - 1});
        REQUIRE(b.gpu.sum_squares({g1})[0] == Approx(b.cpu.sum_squares({c1})[0]).epsilon(1e-9));
    }
}

TEST_CASE("sum_squares of many tensors gives each one's sum, past one buffer of partials too", "[gpu]") {
    Backends b;
    Rng rng(12, "many sums");
    const int64_t big = int64_t(4) << 20, small = 5000;  // big: 1024 partial blocks
    std::vector<float> xb = bf16_normals(big, rng), xs = bf16_normals(small, rng);
    Tensor gb = b.upload(xb, DType::BF16, {big}), gs = b.upload(xs, DType::F32, {small});
    const double want_big = b.gpu.sum_squares({gb})[0], want_small = b.gpu.sum_squares({gs})[0];
    REQUIRE(want_small == Approx(b.cpu.sum_squares({host_tensor(xs, {small})})[0]).epsilon(1e-9));
    // 65 big ones need more partials than one buffer holds: a read-back midway
    std::vector<Tensor> many(65, gb);
    many.insert(many.begin() + 30, gs);
    many.push_back(Tensor(nullptr, DType::F32, {0}));
    const std::vector<double> sums = b.gpu.sum_squares(many);
    REQUIRE(sums.size() == many.size());
    for (size_t i = 0; i < sums.size(); ++i) {
        INFO("tensor " << i);
        REQUIRE(sums[i] == (i == 30 ? want_small : i + 1 == sums.size() ? 0.0 : want_big));  // bit for bit
    }
}
