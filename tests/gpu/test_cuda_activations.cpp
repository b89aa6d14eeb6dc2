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
        // gate_up [R, 2I]: each row's gate, then its up
        std::vector<float> gu = bf16_normals(R * 2 * I, rng, 3.0), g = bf16_normals(R * I, rng, 3.0),
                           d = bf16_normals(R * I, rng);
        std::vector<float> out(size_t(R * I)), s(size_t(R * I));
        b.cpu.swiglu_forward(host_tensor(out, {R, I}), host_tensor(gu, {R, 2 * I}));
        b.cpu.silu_forward(host_tensor(s, {R, I}), host_tensor(g, {R, I}));
        Tensor ggu = b.upload(gu, DType::BF16, {R, 2 * I}), gg = b.upload(g, DType::BF16, {R, I});
        Tensor gout = b.zeros(DType::BF16, {R, I}), gs = b.zeros(DType::BF16, {R, I});
        b.gpu.swiglu_forward(gout, ggu);
        b.gpu.silu_forward(gs, gg);
        require_near("swiglu", b.download(gout), out, kBf16Rtol, kBf16Atol);
        require_near("silu", b.download(gs), s, kBf16Rtol, kBf16Atol);

        // swiglu's gradient overwrites what the buffer held; silu's adds to it
        std::vector<float> dgu = bf16_normals(R * 2 * I, rng), dx = bf16_normals(R * I, rng);
        Tensor gdgu = b.upload(dgu, DType::BF16, {R, 2 * I}), gdx = b.upload(dx, DType::BF16, {R, I});
        Tensor gd = b.upload(d, DType::BF16, {R, I});
        b.gpu.swiglu_backward(gdgu, gd, ggu);
        b.gpu.silu_backward(gdx, gd, gg);
        b.cpu.swiglu_backward(host_tensor(dgu, {R, 2 * I}), host_tensor(d, {R, I}), host_tensor(gu, {R, 2 * I}));
        b.cpu.silu_backward(host_tensor(dx, {R, I}), host_tensor(d, {R, I}), host_tensor(g, {R, I}));
        require_near("dgate_up", b.download(gdgu), dgu, kBf16Rtol, kBf16Atol);
        require_near("silu dx", b.download(gdx), dx, kBf16Rtol, kBf16Atol);
    }
}
