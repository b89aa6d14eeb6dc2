// The CUDA RMSNorm forward and backward (its weight gradient summed in the
// dx pass, or by column sums after it) against the CPU op.
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

TEST_CASE("rmsnorm forward and backward match the CPU", "[gpu]") {
    Backends b;
    Rng rng(4, "rmsnorm");
    // Rows in 16-byte chunks held in registers (D = 64, 1000, 2048), in chunks
    // read twice (D = 4096, past what registers hold) and element by element
    // (D = 36). The last shape is the qk-norm weights' (D = head size, R =
    // tokens x heads): thousands of row chunks for the weight gradient's
    // column sums.
    for (const auto& [R, D] : {std::pair<int64_t, int64_t>{301, 64}, {301, 1000}, {67, 2048}, {33, 4096}, {301, 36},
                               {64 * 4096 + 77, 64}}) {
        INFO("R " << R << ", D " << D);
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

        // Either gradient alone: the bits it has beside the other (dw is
        // summed in the dx pass where a lane keeps its row).
        Tensor gdx_alone = b.zeros(DType::BF16, {R, D}), gdw_alone = b.zeros(DType::F32, {D});
        b.gpu.rmsnorm_backward(gdx_alone, {}, gdy, gx, gw, grstd_cpu, Write::overwrite, Write::overwrite);
        b.gpu.rmsnorm_backward({}, gdw_alone, gdy, gx, gw, grstd_cpu, Write::overwrite, Write::overwrite);
        REQUIRE(b.download(gdx_alone) == b.download(gdx_over));
        REQUIRE(b.download(gdw_alone) == b.download(gdw_over));
    }
}
