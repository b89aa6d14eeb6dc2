// MoE permute and combine on the CPU, driven by a RoutingPlan with a dropped
// slot and an expert that receives no token: forwards against naive loops,
// backwards against central finite differences in double; plan_routing
// against build_routing_plan.
#include <omp.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/routing_plan.h"
#include "tests/gradcheck.h"

using namespace moe;

namespace {

template <class T> Tensor tensor(std::vector<T>& v, std::initializer_list<int64_t> dims) {
    return Tensor(v.data(), dtype_of<T>(), dims);
}

template <class T> std::vector<T> normals(int64_t n, Rng& rng) {
    std::vector<T> v(n);
    for (T& x : v) x = T(rng.normal());
    return v;
}

constexpr int N = 5, K = 2, E = 4, H = 3;

// Capacity ceil(1.0 * 5 * 2 / 4) = 3. Expert 0 is chosen by tokens 0, 1, 2, 3,
// so token 3's first slot (slot 6) is dropped; expert 3 gets no token.
RoutingPlan test_plan() {
    const int32_t expert_of_slot[N * K] = {0, 1, 0, 2, 1, 0, 0, 2, 1, 2};
    RoutingPlan plan = build_routing_plan(expert_of_slot, N, K, E, 1.0);
    REQUIRE(plan.total_dropped() == 1);
    REQUIRE(plan.slot_row[6] == -1);
    REQUIRE(plan.offsets[3] == plan.offsets[4]);
    return plan;
}

// The plan's index arrays and the buffers around it, as host vectors of T.
template <class T> struct Buffers {
    RoutingPlan plan = test_plan();
    int64_t R = plan.rows();
    Rng rng{5, "permute buffers"};
    std::vector<T> x = normals<T>(N * H, rng), xe = std::vector<T>(R * H);
    std::vector<T> ye = normals<T>(R * H, rng), w = normals<T>(N * K, rng), y = normals<T>(N * H, rng);

    Tensor row_token() { return Tensor(plan.row_token.data(), DType::I32, {R}); }
    Tensor slot_row() { return Tensor(plan.slot_row.data(), DType::I32, {N * K}); }
};

template <class T> double tolerance() { return std::is_same<T, float>::value ? 1e-6 : 1e-14; }

template <class T> void check_forwards() {
    Buffers<T> b;
    CpuOps ops;
    ops.permute_forward(tensor(b.xe, {b.R, H}), tensor(b.x, {N, H}), b.row_token());
    for (int64_t r = 0; r < b.R; ++r)
        for (int c = 0; c < H; ++c) REQUIRE(b.xe[r * H + c] == b.x[b.plan.row_token[r] * H + c]);

    const std::vector<T> y_before = b.y;
    ops.combine_forward(tensor(b.y, {N, H}), tensor(b.ye, {b.R, H}), tensor(b.w, {N, K}), b.slot_row(), Write::add,
                        {});
    for (int t = 0; t < N; ++t)
        for (int c = 0; c < H; ++c) {
            double expected = y_before[t * H + c];
            for (int j = 0; j < K; ++j) {
                const int r = b.plan.slot_row[t * K + j];
                if (r >= 0) expected += double(b.w[t * K + j]) * b.ye[r * H + c];
            }
            REQUIRE(std::fabs(b.y[t * H + c] - expected) <= tolerance<T>() * std::max(1.0, std::fabs(expected)));
        }
}

}  // namespace

TEST_CASE("permute_forward gathers and combine_forward adds weighted kept rows", "[unit]") {
    check_forwards<float>();
    check_forwards<double>();
}

TEST_CASE("permute_backward matches finite differences", "[unit]") {
    Buffers<double> b;
    Rng rng(6, "permute upstream");
    const std::vector<double> dxe = normals<double>(b.R * H, rng);  // loss = sum dxe * xe
    CpuOps ops;
    auto loss = [&] {
        ops.permute_forward(tensor(b.xe, {b.R, H}), tensor(b.x, {N, H}), b.row_token());
        double f = 0;
        for (int64_t i = 0; i < b.R * H; ++i) f += dxe[i] * b.xe[i];
        return f;
    };
    const std::vector<double> before = normals<double>(N * H, rng);
    std::vector<double> dx = before, dxe_in = dxe;
    ops.permute_backward(tensor(dx, {N, H}), tensor(dxe_in, {b.R, H}), b.slot_row(), Write::add, {});
    for (int i = 0; i < N * H; ++i) dx[i] -= before[i];
    test::check_gradient("dx", loss, b.x.data(), dx.data(), N * H);
}

TEST_CASE("permute_backward sums each token's slots in slot order for any thread count", "[unit]") {
    // Many tokens and wide rows, in F32 where the order of a sum shows.
    const int n = 64, k = 4, e = 8, h = 200;
    Rng rng(7, "permute order");
    std::vector<int32_t> expert_of_slot(n * k);
    for (int32_t& x : expert_of_slot) x = int32_t(rng.next() % e);
    RoutingPlan plan = build_routing_plan(expert_of_slot.data(), n, k, e, std::nullopt);
    const int64_t R = plan.rows();
    std::vector<float> dxe = normals<float>(R * h, rng), serial(n * h, 0.0f);
    for (int t = 0; t < n; ++t)
        for (int j = 0; j < k; ++j)
            for (int c = 0; c < h; ++c) serial[t * h + c] += dxe[plan.slot_row[t * k + j] * h + c];
    CpuOps ops;
    const int saved = omp_get_max_threads();
    for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        std::vector<float> dx(n * h, 0.0f);
        ops.permute_backward(tensor(dx, {n, h}), tensor(dxe, {R, h}), Tensor(plan.slot_row.data(), DType::I32, {n * k}),
                             Write::add, {});
        REQUIRE(dx == serial);
    }
    omp_set_num_threads(saved);
}

TEST_CASE("combine_backward matches finite differences, dropped slots get no gradient", "[unit]") {
    Buffers<double> b;
    Rng rng(8, "combine upstream");
    std::vector<double> dy = normals<double>(N * H, rng);  // loss = sum dy * y
    CpuOps ops;
    auto loss = [&] {
        std::vector<double> y(N * H, 0.0);
        ops.combine_forward(tensor(y, {N, H}), tensor(b.ye, {b.R, H}), tensor(b.w, {N, K}), b.slot_row(), Write::add,
                            {});
        double f = 0;
        for (int i = 0; i < N * H; ++i) f += dy[i] * y[i];
        return f;
    };
    const std::vector<double> dye_before = normals<double>(b.R * H, rng), dw_before = normals<double>(N * K, rng);
    std::vector<double> dye = dye_before, dw = dw_before;
    ops.combine_backward(tensor(dye, {b.R, H}), tensor(dw, {N, K}), tensor(dy, {N, H}), tensor(b.ye, {b.R, H}),
                         tensor(b.w, {N, K}), b.slot_row(), Write::add);
    REQUIRE(dw[6] == dw_before[6]);  // the dropped slot
    for (int64_t i = 0; i < b.R * H; ++i) dye[i] -= dye_before[i];
    for (int i = 0; i < N * K; ++i) dw[i] -= dw_before[i];
    test::check_gradient("dye", loss, b.ye.data(), dye.data(), b.R * H);
    test::check_gradient("dw", loss, b.w.data(), dw.data(), N * K);

    SECTION("an empty dw is skipped and dye is unchanged by it") {
        std::vector<double> dye_alone = dye_before;
        ops.combine_backward(tensor(dye_alone, {b.R, H}), Tensor{}, tensor(dy, {N, H}), tensor(b.ye, {b.R, H}),
                             tensor(b.w, {N, K}), b.slot_row(), Write::add);
        for (int64_t i = 0; i < b.R * H; ++i) REQUIRE(dye_alone[i] - dye_before[i] == dye[i]);
    }
}

TEST_CASE("permutation ops told to overwrite give what adding to zeros gives, whatever the output held",
          "[unit]") {
    Buffers<double> b;
    Rng rng(9, "overwrite");
    CpuOps ops;
    const std::vector<double> dy = normals<double>(N * H, rng), dxe = normals<double>(b.R * H, rng);
    auto both = [&](int64_t n, auto&& call) {
        std::vector<double> added(n, 0.0), written = normals<double>(n, rng);
        call(added, Write::add);
        call(written, Write::overwrite);
        REQUIRE(written == added);
    };
    both(N * H, [&](std::vector<double>& y, Write wr) {
        ops.combine_forward(tensor(y, {N, H}), tensor(b.ye, {b.R, H}), tensor(b.w, {N, K}), b.slot_row(), wr, {});
    });
    both(N * H, [&](std::vector<double>& dx, Write wr) {
        std::vector<double> src = dxe;
        ops.permute_backward(tensor(dx, {N, H}), tensor(src, {b.R, H}), b.slot_row(), wr, {});
    });
    both(b.R * H, [&](std::vector<double>& dye, Write wr) {
        std::vector<double> g = dy;
        ops.combine_backward(tensor(dye, {b.R, H}), Tensor{}, tensor(g, {N, H}), tensor(b.ye, {b.R, H}),
                             tensor(b.w, {N, K}), b.slot_row(), wr);
    });
}

TEST_CASE("a residual is added after the sum, as add_tensors after the op would add it", "[unit]") {
    // F32, where rounding shows: bit for bit the op, then add_tensors.
    Buffers<float> b;
    Rng rng(10, "residual");
    CpuOps ops;
    const std::vector<float> residual = normals<float>(N * H, rng), start = normals<float>(N * H, rng);
    auto check = [&](auto&& call) {
        for (Write wr : {Write::overwrite, Write::add}) {
            std::vector<float> fused = start, separate = start, res = residual, sum(N * H);
            call(fused, wr, tensor(res, {N, H}));
            call(separate, wr, Tensor{});
            ops.add_tensors(tensor(sum, {N, H}), tensor(res, {N, H}), tensor(separate, {N, H}));
            REQUIRE(fused == sum);
        }
    };
    check([&](std::vector<float>& y, Write wr, Tensor res) {
        ops.combine_forward(tensor(y, {N, H}), tensor(b.ye, {b.R, H}), tensor(b.w, {N, K}), b.slot_row(), wr, res);
    });
    check([&](std::vector<float>& dx, Write wr, Tensor res) {
        ops.permute_backward(tensor(dx, {N, H}), tensor(b.ye, {b.R, H}), b.slot_row(), wr, res);
    });
    std::vector<float> y(N * H), wrong(N * H + 1);
    REQUIRE_THROWS_AS(ops.combine_forward(tensor(y, {N, H}), tensor(b.ye, {b.R, H}), tensor(b.w, {N, K}),
                                          b.slot_row(), Write::overwrite, tensor(wrong, {N * H + 1})),
                      std::logic_error);
}

TEST_CASE("permute and combine reject indices outside their tensors", "[unit]") {
    Buffers<double> b;
    CpuOps ops;
    auto expect_error = [](auto&& call, const std::string& name) {
        try {
            call();
            FAIL("an out-of-range " << name << " was accepted");
        } catch (const std::out_of_range& e) {
            REQUIRE(std::string(e.what()).find(name) != std::string::npos);
        }
    };
    b.plan.row_token[0] = N;
    expect_error([&] { ops.permute_forward(tensor(b.xe, {b.R, H}), tensor(b.x, {N, H}), b.row_token()); },
                 "row_token");
    b.plan.slot_row[0] = int32_t(b.R);
    expect_error([&] {
        ops.combine_forward(tensor(b.y, {N, H}), tensor(b.ye, {b.R, H}), tensor(b.w, {N, K}), b.slot_row(),
                            Write::add, {});
    }, "slot_row");
}

TEST_CASE("plan_routing puts the plan of routing held in a tensor into index tensors", "[unit]") {
    std::vector<int32_t> expert_of_slot = {0, 1, 0, 2, 1, 0, 0, 2, 1, 2};
    const RoutingPlan expected = build_routing_plan(expert_of_slot.data(), N, K, E, 1.0);
    std::vector<int32_t> slot_row(N * K, 7), row_token(N * K, 7);
    CpuOps ops;
    const RoutingCounts counts = ops.plan_routing(tensor(slot_row, {N * K}), tensor(row_token, {N * K}),
                                                  tensor(expert_of_slot, {N, K}), E, 1.0);
    REQUIRE(counts.offsets == expected.offsets);
    REQUIRE(counts.dropped == expected.dropped);
    REQUIRE(counts.capacity == expected.capacity);
    REQUIRE(slot_row == expected.slot_row);
    const int64_t R = expected.rows();
    REQUIRE(std::vector<int32_t>(row_token.begin(), row_token.begin() + R) == expected.row_token);
    REQUIRE(row_token[R] == 7);  // rows past R are not the plan's
    REQUIRE_THROWS_AS(ops.plan_routing(tensor(slot_row, {N * K}), tensor(row_token, {N * K - 1}),
                                       tensor(expert_of_slot, {N, K}), E, 1.0),
                      std::invalid_argument);
}
