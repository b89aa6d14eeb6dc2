// The CUDA SiLU and SwiGLU forward and backward against the CPU ops.
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

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
