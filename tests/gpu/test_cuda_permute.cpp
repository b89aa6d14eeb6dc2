// The CUDA permute and combine ops against the CPU reference, on routing
// plans with dropped slots (slot_row -1) and an expert that gets no token,
// for k = 1 and 2, H = 20 (the element path) and H = 64 (16-byte chunks),
// with and without a residual added in the same pass;
// plan_routing against build_routing_plan, index for index.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/routing_plan.h"
#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int kTokens = 40, kExperts = 6;

// dw is an fp32 dot over H of exact bf16 products: a lane adds its chunks'
// elements in order (8 for H = 64) and a 5-level tree adds the lanes, so the
// rounding is at most ~13 * 2^-24 * sum |dy ye| (~0.64 H = 41 for unit
// normals) = 3e-5; the CPU's double dot is exact by comparison.
constexpr double kDwRtol = 1e-5, kDwAtol = 1e-4;

// Token t's first choice is expert 0 or 1, past their capacity (capacity
// factor 1), so slots drop; its second is 2, 3 or 4; expert 5 gets none.
RoutingPlan make_plan(int k, Rng& rng) {
    std::vector<int32_t> expert_of_slot(size_t(kTokens * k));
    for (int t = 0; t < kTokens; ++t) {
        expert_of_slot[t * k] = rng.uniform() < 0.5 ? 0 : 1;
        if (k > 1) expert_of_slot[t * k + 1] = 2 + t % 3;
    }
    RoutingPlan plan = build_routing_plan(expert_of_slot.data(), kTokens, k, kExperts, 1.0);
    REQUIRE(plan.total_dropped() > 0);
    REQUIRE(plan.offsets[kExperts - 1] == plan.offsets[kExperts]);
    return plan;
}

// wr: the combine and the permute backward add to, or write over, outputs
// that start nonzero.
void check_ops(Backends& b, int k, int64_t H, Write wr) {
    INFO("k " << k << ", H " << H << (wr == Write::add ? ", adding" : ", overwriting"));
    Rng rng(uint64_t(100 * k + H), "cuda permute");
    RoutingPlan plan = make_plan(k, rng);
    const int64_t N = kTokens, R = plan.rows();
    Tensor slot_row = b.upload_ids(plan.slot_row, {N * k}), row_token = b.upload_ids(plan.row_token, {R});
    Tensor cpu_slot_row = host_ids(plan.slot_row, {N * k});

    // permute_forward copies rows: exact.
    std::vector<float> x = bf16_normals(N * H, rng), xe(size_t(R * H));
    b.cpu.permute_forward(host_tensor(xe, {R, H}), host_tensor(x, {N, H}), host_ids(plan.row_token, {R}));
    Tensor gpu_xe = b.zeros(DType::BF16, {R, H});
    b.gpu.permute_forward(gpu_xe, b.upload(x, DType::BF16, {N, H}), row_token);
    require_near("xe", b.download(gpu_xe), xe, 0, 0);

    // Every output below starts nonzero.
    std::vector<float> ye = bf16_normals(R * H, rng), w = bf16_normals(N * k, rng);
    Tensor gpu_ye = b.upload(ye, DType::BF16, {R, H}), gpu_w = b.upload(w, DType::F32, {N, k});
    const std::vector<float> y0 = bf16_normals(N * H, rng);
    std::vector<float> y = y0;
    b.cpu.combine_forward(host_tensor(y, {N, H}), host_tensor(ye, {R, H}), host_tensor(w, {N, k}), cpu_slot_row, wr,
                          {});
    Tensor gpu_y = b.upload(y0, DType::BF16, {N, H});
    b.gpu.combine_forward(gpu_y, gpu_ye, gpu_w, slot_row, wr, {});
    require_near("y", b.download(gpu_y), y, kBf16Rtol, kBf16Atol);

    std::vector<float> dxe = bf16_normals(R * H, rng);
    const std::vector<float> dx0 = bf16_normals(N * H, rng);
    std::vector<float> dx = dx0;
    b.cpu.permute_backward(host_tensor(dx, {N, H}), host_tensor(dxe, {R, H}), cpu_slot_row, wr, {});
    Tensor gpu_dx = b.upload(dx0, DType::BF16, {N, H});
    b.gpu.permute_backward(gpu_dx, b.upload(dxe, DType::BF16, {R, H}), slot_row, wr, {});
    require_near("dx", b.download(gpu_dx), dx, kBf16Rtol, kBf16Atol);

    // With a residual: the bits of the op, then add_tensors.
    const std::vector<float> res = bf16_normals(N * H, rng);
    for (DType dt : {DType::BF16, DType::F32}) {
        INFO("residual, " << dtype_name(dt));
        Tensor gpu_res = b.upload(res, dt, {N, H}), gpu_dxe = b.upload(dxe, dt, {R, H});
        Tensor fused = b.upload(dx0, dt, {N, H}), separate = b.upload(dx0, dt, {N, H}), sum = b.zeros(dt, {N, H});
        b.gpu.permute_backward(fused, gpu_dxe, slot_row, wr, gpu_res);
        b.gpu.permute_backward(separate, gpu_dxe, slot_row, wr, {});
        b.gpu.add_tensors(sum, gpu_res, separate);
        require_near("dx + residual", b.download(fused), b.download(sum), 0, 0);
        if (dt == DType::F32) continue;  // combine_forward is BF16 only
        fused = b.upload(y0, dt, {N, H});
        separate = b.upload(y0, dt, {N, H});
        b.gpu.combine_forward(fused, gpu_ye, gpu_w, slot_row, wr, gpu_res);
        b.gpu.combine_forward(separate, gpu_ye, gpu_w, slot_row, wr, {});
        b.gpu.add_tensors(sum, gpu_res, separate);
        require_near("y + residual", b.download(fused), b.download(sum), 0, 0);
    }

    // F32 rows (the router's weights and their gradients, moved by the
    // expert-parallel dispatcher): the gather exact, the sums in fp32.
    std::vector<float> wr32(size_t(R * H));
    b.cpu.permute_forward(host_tensor(wr32, {R, H}), host_tensor(x, {N, H}), host_ids(plan.row_token, {R}));
    Tensor gpu_wr32 = b.zeros(DType::F32, {R, H});
    b.gpu.permute_forward(gpu_wr32, b.upload(x, DType::F32, {N, H}), row_token);
    require_near("F32 xe", b.download(gpu_wr32), wr32, 0, 0);
    std::vector<float> dx32 = dx0;
    b.cpu.permute_backward(host_tensor(dx32, {N, H}), host_tensor(dxe, {R, H}), cpu_slot_row, wr, {});
    Tensor gpu_dx32 = b.upload(dx0, DType::F32, {N, H});
    b.gpu.permute_backward(gpu_dx32, b.upload(dxe, DType::F32, {R, H}), slot_row, wr, {});
    require_near("F32 dx", b.download(gpu_dx32), dx32, 1e-6, 1e-6);

    std::vector<float> dy = bf16_normals(N * H, rng);
    const std::vector<float> dye0 = bf16_normals(R * H, rng), dw0 = bf16_normals(N * k, rng);
    std::vector<float> dye = dye0, dw = dw0;
    b.cpu.combine_backward(host_tensor(dye, {R, H}), host_tensor(dw, {N, k}), host_tensor(dy, {N, H}),
                           host_tensor(ye, {R, H}), host_tensor(w, {N, k}), cpu_slot_row, wr);
    Tensor gpu_dy = b.upload(dy, DType::BF16, {N, H});
    Tensor gpu_dye = b.upload(dye0, DType::BF16, {R, H}), gpu_dw = b.upload(dw0, DType::F32, {N, k});
    b.gpu.combine_backward(gpu_dye, gpu_dw, gpu_dy, gpu_ye, gpu_w, slot_row, wr);
    require_near("dye", b.download(gpu_dye), dye, kBf16Rtol, kBf16Atol);
    require_near("dw", b.download(gpu_dw), dw, kDwRtol, kDwAtol);

    // Either gradient alone: an empty one is not wanted.
    Tensor dw_only = b.upload(dw0, DType::F32, {N, k}), dye_only = b.upload(dye0, DType::BF16, {R, H});
    b.gpu.combine_backward(Tensor{}, dw_only, gpu_dy, gpu_ye, gpu_w, slot_row, wr);
    b.gpu.combine_backward(dye_only, Tensor{}, gpu_dy, gpu_ye, gpu_w, slot_row, wr);
    require_near("dw alone", b.download(dw_only), dw, kDwRtol, kDwAtol);
    require_near("dye alone", b.download(dye_only), dye, kBf16Rtol, kBf16Atol);
}

}  // namespace

TEST_CASE("cuda permute and combine match the CPU, with dropped slots and an idle expert", "[gpu]") {
    Backends b;
    for (Write wr : {Write::add, Write::overwrite})
        for (int k : {1, 2})
            for (int64_t H : {20, 64}) check_ops(b, k, H, wr);
}

TEST_CASE("cuda plan_routing gives the serial plan, drops and idle experts included", "[gpu]") {
    Backends b;
    struct Case { int N, k, E; std::optional<double> capacity; };
    // Slot counts off the 256-slot chunks and the 32-slot steps; E below, at
    // and past a warp and not a power of two; chunk counts past a warp.
    for (const Case c : {Case{40, 2, 6, 1.0}, Case{5000, 2, 37, 0.8}, Case{5000, 2, 37, std::nullopt},
                         Case{3001, 4, 300, 1.25}, Case{777, 1, 32, 1.0}, Case{1, 1, 1, std::nullopt}}) {
        INFO("N " << c.N << ", k " << c.k << ", E " << c.E << ", capacity factor "
                  << (c.capacity ? *c.capacity : 0.0));
        Rng rng(uint64_t(c.N * c.E), "cuda plan_routing");
        // Skewed choices: expert e with weight ~ 1/(e+1), the last expert never.
        std::vector<int32_t> expert_of_slot(size_t(c.N * c.k));
        for (int32_t& e : expert_of_slot) {
            const int busy = std::max(1, c.E - 1);
            e = int32_t(double(busy) * rng.uniform() * rng.uniform());
        }
        const RoutingPlan expected = build_routing_plan(expert_of_slot.data(), c.N, c.k, c.E, c.capacity);
        const int64_t slots = int64_t(c.N) * c.k;
        Tensor slot_row = b.zeros(DType::I32, {slots}), row_token = b.zeros(DType::I32, {slots});
        const RoutingCounts counts = b.gpu.plan_routing(slot_row, row_token,
                                                        b.upload_ids(expert_of_slot, {c.N, c.k}), c.E, c.capacity);
        REQUIRE(counts.num_tokens == c.N);
        REQUIRE(counts.top_k == c.k);
        REQUIRE(counts.capacity == expected.capacity);
        REQUIRE(counts.offsets == expected.offsets);
        REQUIRE(counts.dropped == expected.dropped);
        REQUIRE(b.download_ids(slot_row) == expected.slot_row);
        const std::vector<int32_t> rows = b.download_ids(row_token);
        REQUIRE(std::vector<int32_t>(rows.begin(), rows.begin() + expected.rows()) == expected.row_token);
    }
    // A slot naming an expert that does not exist: the error names it.
    std::vector<int32_t> bad(600, 1);
    bad[517] = 9;
    Tensor slot_row = b.zeros(DType::I32, {600}), row_token = b.zeros(DType::I32, {600});
    try {
        b.gpu.plan_routing(slot_row, row_token, b.upload_ids(bad, {300, 2}), 4, std::nullopt);
        FAIL("an expert index past E was accepted");
    } catch (const std::logic_error& e) {
        REQUIRE(std::string(e.what()) == "routing: slot 517 names expert 9");
    }
    REQUIRE_THROWS_AS(b.gpu.plan_routing(slot_row, b.zeros(DType::I32, {599}), b.upload_ids(bad, {300, 2}), 4, 1.0),
                      std::invalid_argument);
}

TEST_CASE("cuda permute and combine reject wrong dtypes and shapes", "[gpu]") {
    Backends b;
    const int64_t N = 4, R = 6, H = 8, k = 2;
    Tensor y = b.zeros(DType::BF16, {N, H}), ye = b.zeros(DType::BF16, {R, H});
    Tensor slot_row = b.zeros(DType::I32, {N * k});
    REQUIRE_THROWS_AS(b.gpu.combine_forward(y, ye, b.zeros(DType::BF16, {N, k}), slot_row, Write::add, {}),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.combine_forward(y, b.zeros(DType::BF16, {R, H + 1}), b.zeros(DType::F32, {N, k}), slot_row,
                                            Write::add, {}),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.permute_forward(b.zeros(DType::BF16, {R + 1, H}), y, b.zeros(DType::I32, {R})),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.permute_backward(y, ye, b.zeros(DType::I32, {N * k + 1}), Write::add, {}),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.combine_forward(y, ye, b.zeros(DType::F32, {N, k}), slot_row, Write::add,
                                            b.zeros(DType::BF16, {N, H + 1})),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.permute_backward(y, ye, slot_row, Write::add, b.zeros(DType::F32, {N, H})),
                      std::invalid_argument);
    // F32 rows move as F32: a mix of dtypes is refused.
    REQUIRE_THROWS_AS(b.gpu.permute_forward(b.zeros(DType::F32, {R, H}), y, b.zeros(DType::I32, {R})),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.permute_backward(b.zeros(DType::F32, {N, H}), ye, slot_row, Write::add, {}),
                      std::invalid_argument);
}
