// The CUDA backend's dense ops against the CPU ops: elementwise and
// conversions, reductions, column concat, RMSNorm, linear (cuBLASLt) and
// grouped linear, SiLU/SwiGLU, AdamW with its bf16 working copy.
#include <algorithm>
#include <cmath>
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

TEST_CASE("copy_from_host's source is free once it returns, through its staging ring and past it", "[gpu]") {
    Backends b;
    // Copies of many sizes, through the 16 MB pinned ring more than twice
    // over, and one larger than it; the host source is overwritten as soon
    // as each call returns.
    std::vector<int64_t> sizes;
    for (int i = 0; i < 30; ++i) sizes.push_back(i % 3 == 0 ? (1 << 20) + 7 * i : 1000 + 37 * i);
    sizes.push_back(5 << 20);
    std::vector<Tensor> dsts;
    std::vector<int32_t> src;
    for (size_t i = 0; i < sizes.size(); ++i) {
        dsts.push_back(b.zeros(DType::I32, {sizes[i]}));
        src.assign(size_t(sizes[i]), int32_t(i));
        for (int64_t j = 0; j < sizes[i]; j += 4099) src[size_t(j)] = int32_t(j);
        b.gpu.copy_from_host(dsts.back(), src.data());
        std::fill(src.begin(), src.end(), -1);
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
        INFO("copy " << i << " of " << sizes[i] << " ids");
        std::vector<int32_t> want(size_t(sizes[i]), int32_t(i));
        for (int64_t j = 0; j < sizes[i]; j += 4099) want[size_t(j)] = int32_t(j);
        REQUIRE(b.download_ids(dsts[i]) == want);
    }
}

TEST_CASE("copy_from_host queues its copy without waiting for the GPU", "[gpu]") {
    Backends b;
    // Behind a queue of large GEMMs (tens of ms), the call returns with the
    // GEMMs still running: it did not wait for them.
    const int64_t n = 8192;
    Tensor x = b.zeros(DType::BF16, {n, n}), w = b.zeros(DType::BF16, {n, n}), y = b.zeros(DType::BF16, {n, n});
    for (int i = 0; i < 20; ++i) b.gpu.matmul_forward(y, x, w, {});
    const std::vector<int32_t> ids(16384, 7);
    Tensor dst = b.zeros(DType::I32, {16384});
    b.gpu.copy_from_host(dst, ids.data());
    const cudaError_t state = cudaStreamQuery(b.gpu.stream());
    cudaGetLastError();  // cudaErrorNotReady is a state, not an error
    CHECK(state == cudaErrorNotReady);
    REQUIRE(b.download_ids(dst) == ids);
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

TEST_CASE("concat_cols forward and backward match the CPU", "[gpu]") {
    Backends b;
    Rng rng(3, "concat");
    const int64_t N = 37, A = 24, C = 13;
    std::vector<float> a = bf16_normals(N * A, rng), c = bf16_normals(N * C, rng), dout = bf16_normals(N * (A + C), rng);
    std::vector<float> out_cpu(size_t(N * (A + C)));
    b.cpu.concat_cols_forward(host_tensor(out_cpu, {N, A + C}), host_tensor(a, {N, A}), host_tensor(c, {N, C}));
    Tensor out = b.zeros(DType::BF16, {N, A + C});
    b.gpu.concat_cols_forward(out, b.upload(a, DType::BF16, {N, A}), b.upload(c, DType::BF16, {N, C}));
    REQUIRE(b.download(out) == out_cpu);

    std::vector<float> da = bf16_normals(N * A, rng), dc = bf16_normals(N * C, rng);
    Tensor gda = b.upload(da, DType::BF16, {N, A}), gdc = b.upload(dc, DType::BF16, {N, C});
    b.gpu.concat_cols_backward(gda, gdc, b.upload(dout, DType::BF16, {N, A + C}));
    b.cpu.concat_cols_backward(host_tensor(da, {N, A}), host_tensor(dc, {N, C}), host_tensor(dout, {N, A + C}));
    require_near("da", b.download(gda), da, kBf16Rtol, kBf16Atol);
    require_near("dc", b.download(gdc), dc, kBf16Rtol, kBf16Atol);
}

TEST_CASE("rmsnorm forward and backward match the CPU", "[gpu]") {
    Backends b;
    Rng rng(4, "rmsnorm");
    // The last shape is the qk-norm weights' (D = head size, R = tokens x
    // heads): thousands of row chunks for the weight gradient's column sums.
    for (const auto& [R, D] : {std::pair<int64_t, int64_t>{301, 64}, {301, 1000}, {64 * 4096 + 77, 64}}) {
        std::vector<float> x = bf16_normals(R * D, rng, 2.0), w = bf16_normals(D, rng), dy = bf16_normals(R * D, rng);
        std::vector<float> y(size_t(R * D)), rstd(static_cast<size_t>(R));
        b.cpu.rmsnorm_forward(host_tensor(y, {R, D}), host_tensor(rstd, {R}), host_tensor(x, {R, D}),
                              host_tensor(w, {D}), 1e-6);
        Tensor gx = b.upload(x, DType::BF16, {R, D}), gw = b.upload(w, DType::BF16, {D});
        Tensor gy = b.zeros(DType::BF16, {R, D}), grstd = b.zeros(DType::F32, {R});
        b.gpu.rmsnorm_forward(gy, grstd, gx, gw, 1e-6);
        require_near("y", b.download(gy), y, kBf16Rtol, kBf16Atol);
        require_near("rstd", b.download(grstd), rstd, 1e-5, 0);

        // Backward from non-zero gradients: it accumulates. rstd from the CPU
        // on both sides, so only the backward's own rounding shows.
        std::vector<float> dx = bf16_normals(R * D, rng), dw(size_t(D), 0.25f);
        Tensor gdx = b.upload(dx, DType::BF16, {R, D}), gdw = b.upload(dw, DType::F32, {D});
        Tensor gdy = b.upload(dy, DType::BF16, {R, D}), grstd_cpu = b.upload(rstd, DType::F32, {R});
        b.gpu.rmsnorm_backward(gdx, gdw, gdy, gx, gw, grstd_cpu, Write::add, Write::add);
        b.cpu.rmsnorm_backward(host_tensor(dx, {R, D}), host_tensor(dw, {D}), host_tensor(dy, {R, D}),
                               host_tensor(x, {R, D}), host_tensor(w, {D}), host_tensor(rstd, {R}), Write::add,
                               Write::add);
        require_near("dx", b.download(gdx), dx, kBf16Rtol, 2 * kBf16Atol);
        require_near("dw", b.download(gdw), dw, 1e-4, 1e-4);  // fp32 sums of R products in another order

        // Overwriting both: the garbage they held (NaN included) leaves no trace.
        std::vector<float> dx_garbage = bf16_normals(R * D, rng), dw_garbage = bf16_normals(D, rng);
        dx_garbage[7] = dw_garbage[1] = NAN;
        Tensor gdx_over = b.upload(dx_garbage, DType::BF16, {R, D}), gdw_over = b.upload(dw_garbage, DType::F32, {D});
        b.gpu.rmsnorm_backward(gdx_over, gdw_over, gdy, gx, gw, grstd_cpu, Write::overwrite, Write::overwrite);
        b.cpu.rmsnorm_backward(host_tensor(dx, {R, D}), host_tensor(dw, {D}), host_tensor(dy, {R, D}),
                               host_tensor(x, {R, D}), host_tensor(w, {D}), host_tensor(rstd, {R}),
                               Write::overwrite, Write::overwrite);
        require_near("dx overwritten", b.download(gdx_over), dx, kBf16Rtol, 2 * kBf16Atol);
        require_near("dw overwritten", b.download(gdw_over), dw, 1e-4, 1e-4);
    }
}

TEST_CASE("matmul forward (with bias, into F32) and backward match the CPU", "[gpu]") {
    Backends b;
    Rng rng(5, "matmul");
    const int64_t N = 133, I = 72, O = 40;  // no dimension a multiple of a tile
    std::vector<float> x = bf16_normals(N * I, rng), w = bf16_normals(O * I, rng, 0.1), bias = bf16_normals(O, rng);
    std::vector<float> y(size_t(N * O));
    b.cpu.matmul_forward(host_tensor(y, {N, O}), host_tensor(x, {N, I}), host_tensor(w, {O, I}), host_tensor(bias, {O}));
    Tensor gx = b.upload(x, DType::BF16, {N, I}), gw = b.upload(w, DType::BF16, {O, I});
    Tensor gy = b.zeros(DType::BF16, {N, O});
    b.gpu.matmul_forward(gy, gx, gw, b.upload(bias, DType::BF16, {O}));
    require_near("y", b.download(gy), y, kBf16Rtol, kBf16Atol);

    std::vector<float> y_nobias(size_t(N * O));
    b.cpu.matmul_forward(host_tensor(y_nobias, {N, O}), host_tensor(x, {N, I}), host_tensor(w, {O, I}), {});
    Tensor gy32 = b.zeros(DType::F32, {N, O});
    b.gpu.matmul_forward(gy32, gx, gw, {});
    require_near("y (F32 out)", b.download(gy32), y_nobias, 1e-5, 1e-5);

    std::vector<float> dy = bf16_normals(N * O, rng);
    Tensor gdy = b.upload(dy, DType::BF16, {N, O});
    // The backward from given gradients, added to or written over (then the
    // garbage they held, NaN included, must leave no trace), against the CPU.
    const auto check_backward = [&](Write write, std::vector<float> dx, std::vector<float> dw, std::vector<float> db) {
        INFO((write == Write::add ? "adding" : "overwriting"));
        Tensor gdx = b.upload(dx, DType::BF16, {N, I}), gdw = b.upload(dw, DType::F32, {O, I});
        Tensor gdb = b.upload(db, DType::F32, {O});
        b.gpu.matmul_backward(gdx, gdw, gdb, gdy, gx, gw, write, write);
        b.cpu.matmul_backward(host_tensor(dx, {N, I}), host_tensor(dw, {O, I}), host_tensor(db, {O}),
                              host_tensor(dy, {N, O}), host_tensor(x, {N, I}), host_tensor(w, {O, I}), write, write);
        require_near("dx", b.download(gdx), dx, kBf16Rtol, kBf16Atol);
        require_near("dw", b.download(gdw), dw, 1e-5, 1e-4);
        require_near("db", b.download(gdb), db, 1e-5, 1e-4);
    };
    check_backward(Write::add, bf16_normals(N * I, rng), std::vector<float>(size_t(O * I), 0.5f),
                   std::vector<float>(size_t(O), -1.0f));
    std::vector<float> dx_garbage = bf16_normals(N * I, rng), dw_garbage = bf16_normals(O * I, rng),
                       db_garbage = bf16_normals(O, rng);
    dx_garbage[5] = dw_garbage[9] = db_garbage[2] = NAN;
    check_backward(Write::overwrite, dx_garbage, dw_garbage, db_garbage);
}

TEST_CASE("grouped matmul matches the CPU with an expert that gets no row", "[gpu]") {
    Backends b;
    Rng rng(6, "grouped");
    const int64_t E = 5, I = 48, O = 24;
    const std::vector<int64_t> offsets = {0, 7, 7, 30, 31, 50};  // expert 1 gets nothing
    const int64_t R = offsets.back();
    std::vector<float> x = bf16_normals(R * I, rng), w = bf16_normals(E * O * I, rng, 0.1);
    std::vector<float> y(size_t(R * O));
    b.cpu.grouped_matmul_forward(host_tensor(y, {R, O}), host_tensor(x, {R, I}), host_tensor(w, {E, O, I}), offsets);
    Tensor gx = b.upload(x, DType::BF16, {R, I}), gw = b.upload(w, DType::BF16, {E, O, I});
    Tensor gy = b.zeros(DType::BF16, {R, O});
    b.gpu.grouped_matmul_forward(gy, gx, gw, offsets);
    require_near("y", b.download(gy), y, kBf16Rtol, kBf16Atol);

    std::vector<float> dy = bf16_normals(R * O, rng), dx = bf16_normals(R * I, rng);
    std::vector<float> dw(size_t(E * O * I), 0.125f);
    Tensor gdx = b.upload(dx, DType::BF16, {R, I}), gdw = b.upload(dw, DType::F32, {E, O, I});
    Tensor gdy = b.upload(dy, DType::BF16, {R, O});
    b.gpu.grouped_matmul_backward(gdx, gdw, gdy, gx, gw, offsets, Write::add, Write::add);
    b.cpu.grouped_matmul_backward(host_tensor(dx, {R, I}), host_tensor(dw, {E, O, I}), host_tensor(dy, {R, O}),
                                  host_tensor(x, {R, I}), host_tensor(w, {E, O, I}), offsets, Write::add, Write::add);
    require_near("dx", b.download(gdx), dx, kBf16Rtol, kBf16Atol);
    require_near("dw", b.download(gdw), dw, 1e-5, 1e-4);  // expert 1's stays 0.125: nothing added

    // Overwriting: the garbage the gradients held (NaN included, in the empty
    // expert's weights too) leaves no trace; expert 1's gradient is zero.
    std::vector<float> dx_garbage = bf16_normals(R * I, rng), dw_garbage = bf16_normals(E * O * I, rng);
    dx_garbage[3] = dw_garbage[O * I + 5] = NAN;
    Tensor gdx_over = b.upload(dx_garbage, DType::BF16, {R, I}), gdw_over = b.upload(dw_garbage, DType::F32, {E, O, I});
    b.gpu.grouped_matmul_backward(gdx_over, gdw_over, gdy, gx, gw, offsets, Write::overwrite, Write::overwrite);
    b.cpu.grouped_matmul_backward(host_tensor(dx, {R, I}), host_tensor(dw, {E, O, I}), host_tensor(dy, {R, O}),
                                  host_tensor(x, {R, I}), host_tensor(w, {E, O, I}), offsets, Write::overwrite,
                                  Write::overwrite);
    require_near("dx overwritten", b.download(gdx_over), dx, kBf16Rtol, kBf16Atol);
    const std::vector<float> dw_over = b.download(gdw_over);
    require_near("dw overwritten", dw_over, dw, 1e-5, 1e-4);
    for (int64_t j = O * I; j < 2 * O * I; ++j) REQUIRE(dw_over[size_t(j)] == 0.0f);
}

TEST_CASE("grouped matmul plans expert sizes by class: new loads reuse plans and stay exact", "[gpu]") {
    Backends b;
    Rng rng(16, "grouped sizes");
    const int64_t E = 2, I = 128, O = 128;  // 256-byte rows: every expert's slice has one alignment
    std::vector<float> w = bf16_normals(E * O * I, rng, 0.1);
    Tensor gw = b.upload(w, DType::BF16, {E, O, I});
    size_t plans_after_first = 0;
    // Expert loads of one size class (1025..1280 rows), a new pair every step.
    const std::vector<std::pair<int64_t, int64_t>> loads = {{1025, 1280}, {1100, 1031}, {1279, 1200}, {1177, 1026}};
    for (const auto& [r0, r1] : loads) {
        INFO("expert rows " << r0 << " and " << r1);
        const std::vector<int64_t> offsets = {0, r0, r0 + r1};
        const int64_t R = r0 + r1;
        std::vector<float> x = bf16_normals(R * I, rng), dy = bf16_normals(R * O, rng);
        std::vector<float> y(size_t(R * O)), dx(size_t(R * I), 0.0f), dw(size_t(E * O * I), 0.0f);
        Tensor gx = b.upload(x, DType::BF16, {R, I}), gy = b.zeros(DType::BF16, {R, O});
        Tensor gdx = b.zeros(DType::BF16, {R, I}), gdw = b.zeros(DType::F32, {E, O, I});
        b.gpu.grouped_matmul_forward(gy, gx, gw, offsets);
        b.gpu.grouped_matmul_backward(gdx, gdw, b.upload(dy, DType::BF16, {R, O}), gx, gw, offsets,
                                      Write::add, Write::add);
        b.cpu.grouped_matmul_forward(host_tensor(y, {R, O}), host_tensor(x, {R, I}), host_tensor(w, {E, O, I}), offsets);
        b.cpu.grouped_matmul_backward(host_tensor(dx, {R, I}), host_tensor(dw, {E, O, I}), host_tensor(dy, {R, O}),
                                      host_tensor(x, {R, I}), host_tensor(w, {E, O, I}), offsets, Write::add,
                                      Write::add);
        require_near("y", b.download(gy), y, kBf16Rtol, kBf16Atol);
        require_near("dx", b.download(gdx), dx, kBf16Rtol, kBf16Atol);
        require_near("dw", b.download(gdw), dw, 1e-5, 1e-4);
        if (!plans_after_first) plans_after_first = b.gpu.matmul_plan_count();
        // forward, dx and dw: one plan each for the whole class
        REQUIRE(b.gpu.matmul_plan_count() == plans_after_first);
        REQUIRE(plans_after_first <= 3);
    }
}

TEST_CASE("a dense GEMM of an expert size class's shape runs at its own size", "[gpu]") {
    Backends b;
    Rng rng(17, "shared plan");
    // Expert 1's 100 rows are planned as the class of 128 rows, the shape of
    // the dense GEMM after it: the plan they share must take each call's size.
    const int64_t E = 2, I = 128, O = 256, N = 128;
    const std::vector<int64_t> offsets = {0, 28, 128};
    std::vector<float> w = bf16_normals(E * O * I, rng, 0.1), x = bf16_normals(N * I, rng);
    Tensor gw = b.upload(w, DType::BF16, {E, O, I}), gx = b.upload(x, DType::BF16, {N, I});
    b.gpu.grouped_matmul_forward(b.zeros(DType::BF16, {N, O}), gx, gw, offsets);
    std::vector<float> y(size_t(N * O));
    std::vector<float> w0(w.begin(), w.begin() + O * I);
    b.cpu.matmul_forward(host_tensor(y, {N, O}), host_tensor(x, {N, I}), host_tensor(w0, {O, I}), {});
    Tensor gy = b.zeros(DType::BF16, {N, O});
    b.gpu.matmul_forward(gy, gx, gw.rows(0, 1).view({O, I}), {});
    require_near("y", b.download(gy), y, kBf16Rtol, kBf16Atol);  // every row, not the expert's 100
}

TEST_CASE("silu and swiglu forward and backward match the CPU", "[gpu]") {
    Backends b;
    Rng rng(7, "activations");
    // 33 x 70: element by element; 16 x 72: SwiGLU in 16-byte chunks
    for (const auto& [R, I] : {std::pair<int64_t, int64_t>{33, 70}, std::pair<int64_t, int64_t>{16, 72}}) {
        INFO(R << " x " << I);
        std::vector<float> g = bf16_normals(R * I, rng, 3.0), u = bf16_normals(R * I, rng),
                           d = bf16_normals(R * I, rng);
        std::vector<float> out(size_t(R * I)), s(size_t(R * I));
        b.cpu.swiglu_forward(host_tensor(out, {R, I}), host_tensor(g, {R, I}), host_tensor(u, {R, I}));
        b.cpu.silu_forward(host_tensor(s, {R, I}), host_tensor(g, {R, I}));
        Tensor gg = b.upload(g, DType::BF16, {R, I}), gu = b.upload(u, DType::BF16, {R, I});
        Tensor gout = b.zeros(DType::BF16, {R, I}), gs = b.zeros(DType::BF16, {R, I});
        b.gpu.swiglu_forward(gout, gg, gu);
        b.gpu.silu_forward(gs, gg);
        require_near("swiglu", b.download(gout), out, kBf16Rtol, kBf16Atol);
        require_near("silu", b.download(gs), s, kBf16Rtol, kBf16Atol);

        // swiglu's gradients overwrite what the buffers held; silu's add to it
        std::vector<float> dg = bf16_normals(R * I, rng), du = bf16_normals(R * I, rng), dx = dg;
        Tensor gdg = b.upload(dg, DType::BF16, {R, I}), gdu = b.upload(du, DType::BF16, {R, I});
        Tensor gdx = b.upload(dx, DType::BF16, {R, I}), gd = b.upload(d, DType::BF16, {R, I});
        b.gpu.swiglu_backward(gdg, gdu, gd, gg, gu);
        b.gpu.silu_backward(gdx, gd, gg);
        b.cpu.swiglu_backward(host_tensor(dg, {R, I}), host_tensor(du, {R, I}), host_tensor(d, {R, I}),
                              host_tensor(g, {R, I}), host_tensor(u, {R, I}));
        b.cpu.silu_backward(host_tensor(dx, {R, I}), host_tensor(d, {R, I}), host_tensor(g, {R, I}));
        require_near("dgate", b.download(gdg), dg, kBf16Rtol, kBf16Atol);
        require_near("dup", b.download(gdu), du, kBf16Rtol, kBf16Atol);
        require_near("silu dx", b.download(gdx), dx, kBf16Rtol, kBf16Atol);

        // one gradient alone
        Tensor gdu_alone = b.zeros(DType::BF16, {R, I});
        b.gpu.swiglu_backward({}, gdu_alone, gd, gg, gu);
        REQUIRE(b.download(gdu_alone) == b.download(gdu));
    }
}

TEST_CASE("adamw updates fp32 master weights like the CPU and rewrites the bf16 copy", "[gpu]") {
    Backends b;
    Rng rng(8, "adamw");
    const int64_t n = 777;
    std::vector<float> p(static_cast<size_t>(n)), g(static_cast<size_t>(n)), m(static_cast<size_t>(n)), v(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) {
        p[i] = float(rng.normal());
        g[i] = float(rng.normal());
        m[i] = float(0.1 * rng.normal());
        v[i] = float(0.01 * std::fabs(rng.normal()));
    }
    Tensor gp = b.upload(p, DType::F32, {n}), gg = b.upload(g, DType::F32, {n}), gm = b.upload(m, DType::F32, {n});
    Tensor gv = b.upload(v, DType::F32, {n}), work = b.zeros(DType::BF16, {n});
    AdamWParams a;
    a.lr = 1e-2;
    a.weight_decay = 0.1;
    a.step = 3;
    a.grad_scale = 0.5;
    b.gpu.adamw_step(gp, gg, gm, gv, work, a);
    b.cpu.adamw_step(host_tensor(p, {n}), host_tensor(g, {n}), host_tensor(m, {n}), host_tensor(v, {n}), {}, a);
    require_near("param", b.download(gp), p, 1e-5, 1e-6);
    require_near("m", b.download(gm), m, 1e-5, 1e-7);
    require_near("v", b.download(gv), v, 1e-5, 1e-9);
    const std::vector<float> master = b.download(gp), copy = b.download(work);
    for (size_t i = 0; i < size_t(n); ++i) REQUIRE(copy[i] == round_bf16(master[i]));
}
