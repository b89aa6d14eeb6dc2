// The CUDA AdamW step against the CPU's: fp32 master weights and moments,
// and the bf16 working copy it rewrites.
#include <cmath>

#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

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
