// The cuBLASLt GEMMs against the CPU ops: the dense linear with bias and its
// backward, with a residual added in its epilogue, the linear of a
// concatenation [a | b] (the dynamics controller),
// the grouped (per-expert) linear (its experts spread over side streams), and
// its plans by size class, and the timing of cuBLASLt's candidates for a plan.
#include <algorithm>
#include <tuple>

#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

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

TEST_CASE("matmul_residual_forward adds the residual in the GEMM: the CPU's sum, rounded once", "[gpu]") {
    Backends b;
    Rng rng(9, "matmul residual");
    const int64_t N = 133, I = 72, O = 40;
    const std::vector<float> x = bf16_normals(N * I, rng), w = bf16_normals(O * I, rng, 0.1);
    const std::vector<float> residual = bf16_normals(N * O, rng, 4.0);
    std::vector<float> y(size_t(N * O)), r = residual, cx = x, cw = w;
    b.cpu.matmul_residual_forward(host_tensor(y, {N, O}), host_tensor(cx, {N, I}), host_tensor(cw, {O, I}),
                                  host_tensor(r, {N, O}));
    const Tensor gr = b.upload(residual, DType::BF16, {N, O});
    Tensor gy = b.upload(bf16_normals(N * O, rng), DType::BF16, {N, O});  // overwritten
    b.gpu.matmul_residual_forward(gy, b.upload(x, DType::BF16, {N, I}), b.upload(w, DType::BF16, {O, I}), gr);
    require_near("y", b.download(gy), y, kBf16Rtol, kBf16Atol);
    REQUIRE(b.download(gr) == residual);  // C read, D written
    // In place (y the residual itself) too, as cuBLASLt's C = D.
    b.gpu.matmul_residual_forward(gr, b.upload(x, DType::BF16, {N, I}), b.upload(w, DType::BF16, {O, I}), gr);
    REQUIRE(b.download(gr) == b.download(gy));
}

TEST_CASE("concat_matmul forward and backward match the CPU", "[gpu]") {
    Backends b;
    Rng rng(19, "concat matmul");
    // The controller's shapes in small (A = B = H, O = C), and unequal widths
    // whose second block starts 48 bytes into a row (aligned to 16, not 256).
    for (const auto& [N, A, B, O] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{70, 64, 64, 24},
                                     std::tuple<int64_t, int64_t, int64_t, int64_t>{33, 24, 40, 8}}) {
        INFO("N " << N << ", A " << A << ", B " << B << ", O " << O);
        std::vector<float> a = bf16_normals(N * A, rng), c = bf16_normals(N * B, rng);
        std::vector<float> w = bf16_normals(O * (A + B), rng, 0.1), bias = bf16_normals(O, rng);
        Tensor ga = b.upload(a, DType::BF16, {N, A}), gc = b.upload(c, DType::BF16, {N, B});
        Tensor gw = b.upload(w, DType::BF16, {O, A + B});
        std::vector<float> y(size_t(N * O));
        b.cpu.concat_matmul_forward(host_tensor(y, {N, O}), host_tensor(a, {N, A}), host_tensor(c, {N, B}),
                                    host_tensor(w, {O, A + B}), host_tensor(bias, {O}));
        Tensor gy = b.zeros(DType::BF16, {N, O});
        b.gpu.concat_matmul_forward(gy, ga, gc, gw, b.upload(bias, DType::BF16, {O}));
        require_near("y", b.download(gy), y, kBf16Rtol, kBf16Atol);

        // Adding into da and dc (as the dynamics layer does), overwriting dw
        // and dbias, whose garbage (NaN included) must leave no trace.
        std::vector<float> dy = bf16_normals(N * O, rng), da = bf16_normals(N * A, rng), dc = bf16_normals(N * B, rng);
        std::vector<float> dw = bf16_normals(O * (A + B), rng), dbias = bf16_normals(O, rng);
        dw[3] = dbias[1] = NAN;
        Tensor gda = b.upload(da, DType::BF16, {N, A}), gdc = b.upload(dc, DType::BF16, {N, B});
        Tensor gdw = b.upload(dw, DType::F32, {O, A + B}), gdbias = b.upload(dbias, DType::F32, {O});
        b.gpu.concat_matmul_backward(gda, gdc, gdw, gdbias, b.upload(dy, DType::BF16, {N, O}), ga, gc, gw, Write::add,
                                     Write::overwrite);
        b.cpu.concat_matmul_backward(host_tensor(da, {N, A}), host_tensor(dc, {N, B}), host_tensor(dw, {O, A + B}),
                                     host_tensor(dbias, {O}), host_tensor(dy, {N, O}), host_tensor(a, {N, A}),
                                     host_tensor(c, {N, B}), host_tensor(w, {O, A + B}), Write::add,
                                     Write::overwrite);
        require_near("da", b.download(gda), da, kBf16Rtol, kBf16Atol);
        require_near("dc", b.download(gdc), dc, kBf16Rtol, kBf16Atol);
        require_near("dw", b.download(gdw), dw, 1e-5, 1e-4);
        require_near("dbias", b.download(gdbias), dbias, 1e-5, 1e-4);
    }
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

TEST_CASE("grouped matmul over more experts than side streams matches the CPU with the same bits on any streams",
          "[gpu]") {
    Backends b;
    Rng rng(18, "grouped lanes");
    // 9 experts over CudaOps::kExpertLanes side streams: several experts share
    // a stream, and each of the three GEMMs of an expert runs beside others.
    const int64_t E = 9, I = 136, O = 200;
    static_assert(E > 2 * CudaOps::kExpertLanes, "experts must wrap around the side streams");
    const std::vector<int64_t> offsets = {0, 300, 301, 301, 700, 950, 1200, 1201, 1450, 1700};
    const int64_t R = offsets.back();
    std::vector<float> x = bf16_normals(R * I, rng), w = bf16_normals(E * O * I, rng, 0.1);
    std::vector<float> dy = bf16_normals(R * O, rng);
    Tensor gx = b.upload(x, DType::BF16, {R, I}), gw = b.upload(w, DType::BF16, {E, O, I});
    Tensor gdy = b.upload(dy, DType::BF16, {R, O});
    std::vector<float> y(size_t(R * O)), dx(size_t(R * I)), dw(size_t(E * O * I));
    b.cpu.grouped_matmul_forward(host_tensor(y, {R, O}), host_tensor(x, {R, I}), host_tensor(w, {E, O, I}), offsets);
    b.cpu.grouped_matmul_backward(host_tensor(dx, {R, I}), host_tensor(dw, {E, O, I}), host_tensor(dy, {R, O}),
                                  host_tensor(x, {R, I}), host_tensor(w, {E, O, I}), offsets, Write::overwrite,
                                  Write::overwrite);
    std::vector<std::vector<float>> first;
    for (int run = 0; run < 2; ++run) {
        INFO("run " << run);
        Tensor gy = b.zeros(DType::BF16, {R, O}), gdx = b.upload(bf16_normals(R * I, rng), DType::BF16, {R, I});
        Tensor gdw = b.upload(bf16_normals(E * O * I, rng), DType::F32, {E, O, I});
        b.gpu.grouped_matmul_forward(gy, gx, gw, offsets);
        b.gpu.grouped_matmul_backward(gdx, gdw, gdy, gx, gw, offsets, Write::overwrite, Write::overwrite);
        std::vector<std::vector<float>> got = {b.download(gy), b.download(gdx), b.download(gdw)};
        require_near("y", got[0], y, kBf16Rtol, kBf16Atol);
        require_near("dx", got[1], dx, kBf16Rtol, kBf16Atol);
        require_near("dw", got[2], dw, 1e-5, 1e-4);
        if (run == 0) first = got;
        else REQUIRE(got == first);
    }
    // The same GEMMs all on the main stream (MOE_CUDA_EXPERT_STREAMS=0): the same bits.
    ScopedEnv env("MOE_CUDA_EXPERT_STREAMS", "0");
    CudaOps main_only(0);
    REQUIRE(main_only.expert_streams() == 0);
    Tensor gy = b.zeros(DType::BF16, {R, O}), gdx = b.zeros(DType::BF16, {R, I}), gdw = b.zeros(DType::F32, {E, O, I});
    b.gpu.synchronize();  // main_only's stream is another one
    main_only.grouped_matmul_forward(gy, gx, gw, offsets);
    main_only.grouped_matmul_backward(gdx, gdw, gdy, gx, gw, offsets, Write::overwrite, Write::overwrite);
    main_only.synchronize();
    REQUIRE(b.download(gy) == first[0]);
    REQUIRE(b.download(gdx) == first[1]);
    REQUIRE(b.download(gdw) == first[2]);
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

TEST_CASE("gemm_candidates times each plan's algorithms and leaves the plans as they were", "[gpu]") {
    Backends b;
    Rng rng(18, "gemm candidates");
    // A dense GEMM with its bias epilogue, and a grouped one whose two experts
    // (rows 100 and 120: one size class) share one plan.
    const int64_t N = 220, I = 128, O = 256, E = 2;
    const std::vector<int64_t> offsets = {0, 100, N};
    std::vector<float> x = bf16_normals(N * I, rng), w = bf16_normals(E * O * I, rng, 0.1);
    std::vector<float> bias = bf16_normals(O, rng);
    Tensor gx = b.upload(x, DType::BF16, {N, I}), gw = b.upload(w, DType::BF16, {E, O, I});
    Tensor gbias = b.upload(bias, DType::BF16, {O});
    Tensor dense = b.zeros(DType::BF16, {N, O}), grouped = b.zeros(DType::BF16, {N, O});
    const auto run = [&] {
        b.gpu.matmul_forward(dense, gx, gw.rows(0, 1).view({O, I}), gbias);
        b.gpu.grouped_matmul_forward(grouped, gx, gw, offsets);
        return std::make_pair(b.download(dense), b.download(grouped));
    };
    const auto before = run();
    REQUIRE(b.gpu.matmul_plan_count() == 2);
    std::vector<CudaOps::GemmCandidates> shapes = b.gpu.gemm_candidates(3, 0.0);
    REQUIRE(shapes.size() == 2);
    std::vector<uint64_t> runs;
    for (const CudaOps::GemmCandidates& g : shapes) {
        INFO(g.shape);
        runs.push_back(g.runs);
        REQUIRE(!g.seconds.empty());
        REQUIRE(g.seconds.size() <= 3);
        for (double s : g.seconds) REQUIRE(s > 0);
        REQUIRE(g.flops == 2.0 * O * I * (g.runs == 1 ? N : 128));  // the experts' class: 128 rows
    }
    std::sort(runs.begin(), runs.end());
    REQUIRE(runs == std::vector<uint64_t>{1, 2});
    // The plans run as before: the bias they read is the call's, each call its own size.
    const auto after = run();
    REQUIRE(after.first == before.first);
    REQUIRE(after.second == before.second);
    runs.clear();
    for (const CudaOps::GemmCandidates& g : b.gpu.gemm_candidates(1, 0.0)) {
        REQUIRE(g.seconds.size() == 1);
        runs.push_back(g.runs);
    }
    std::sort(runs.begin(), runs.end());
    REQUIRE(runs == std::vector<uint64_t>{2, 4});  // the timing counted no runs of its own
}
