// The CUDA AdamW step against the CPU's: fp32 master weights and moments,
// and the bf16 working copy it rewrites, for a list of tensors updated in
// one launch.
#include <cmath>

#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

TEST_CASE("one adamw launch updates a list of fp32 master weights like the CPU and rewrites their bf16 copies",
          "[gpu]") {
    // Sizes not a multiple of 4, one empty, ones of many blocks; tensor 2
    // starts one float past a 16-byte boundary (the unaligned path), tensor 3
    // has no working copy of its own (work is the master). Every buffer has
    // a spare element, so none is allocated empty.
    const std::vector<int64_t> sizes = {777, 5, 1001, 3, 0, 3 * 8192 + 5, 100000};
    const std::vector<double> decays = {0.1, 0.0, 0.1, 0.05, 0.1, 0.0, 0.1};
    Backends b;
    Rng rng(8, "adamw");
    AdamWParams a;
    a.lr = 1e-2;
    a.step = 3;
    a.grad_scale = 0.5;
    std::vector<std::vector<float>> p, g, m, v;
    std::vector<AdamWTensor> gpu, cpu;
    for (size_t t = 0; t < sizes.size(); ++t) {
        const int64_t n = sizes[t], skip = t == 2 || n == 0 ? 1 : 0;
        std::vector<float> pt(size_t(n + skip)), gt(pt.size()), mt(pt.size()), vt(pt.size());
        for (size_t i = 0; i < pt.size(); ++i) {
            pt[i] = float(rng.normal());
            gt[i] = float(rng.normal());
            mt[i] = float(0.1 * rng.normal());
            vt[i] = float(0.01 * std::fabs(rng.normal()));
        }
        const auto up = [&](const std::vector<float>& host) {
            return b.upload(host, DType::F32, {n + skip}).rows(skip, n + skip);
        };
        const Tensor gp = up(pt);
        gpu.push_back({gp, up(gt), up(mt), up(vt), t == 3 ? gp : b.zeros(DType::BF16, {n + 1}).rows(0, n),
                       decays[t]});
        for (auto* host : {&pt, &gt, &mt, &vt}) host->erase(host->begin(), host->begin() + skip);
        p.push_back(pt);
        g.push_back(gt);
        m.push_back(mt);
        v.push_back(vt);
    }
    for (size_t t = 0; t < sizes.size(); ++t)
        cpu.push_back({host_tensor(p[t], {sizes[t]}), host_tensor(g[t], {sizes[t]}), host_tensor(m[t], {sizes[t]}),
                       host_tensor(v[t], {sizes[t]}), {}, decays[t]});
    b.gpu.adamw_step(gpu, a);
    b.cpu.adamw_step(cpu, a);
    for (size_t t = 0; t < sizes.size(); ++t) {
        INFO("tensor " << t << " of " << sizes[t]);
        const std::vector<float> master = b.download(gpu[t].param);
        require_near("param", master, p[t], 1e-5, 1e-6);
        require_near("m", b.download(gpu[t].m), m[t], 1e-5, 1e-7);
        require_near("v", b.download(gpu[t].v), v[t], 1e-5, 1e-9);
        if (t == 3) continue;
        const std::vector<float> copy = b.download(gpu[t].work);
        for (size_t i = 0; i < master.size(); ++i) REQUIRE(copy[i] == round_bf16(master[i]));
    }
}
