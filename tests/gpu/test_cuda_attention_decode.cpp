// The CUDA attention over a KV cache (attention_decode) against the CPU op on
// the same bf16-exact inputs: head sizes from 16 to 256 (48 too, which the
// flash kernels do not take), grouped kv heads, one new row or a prefill's
// chunk, caches shorter than the kernel's warps and as long as they come; and
// bit-identical reruns.
//
// Tolerance: scores, probabilities and the weighted sum stay in fp32 (nothing
// is rounded to bf16 on the way, unlike the flash kernels' tensor-core
// operands), so only the output's own bf16 rounding and fp32 reordering
// differ: kBf16Rtol and kBf16Atol.
#include <string>
#include <utility>
#include <vector>

#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

struct CacheShape {
    int64_t S, nh, nkv, hd;
};

void check_decode(const CacheShape& c) {
    INFO("S " << c.S << " nh " << c.nh << " nkv " << c.nkv << " hd " << c.hd);
    Backends be;
    Rng rng(6, "cuda attention decode");
    std::vector<float> k = bf16_normals(c.S * c.nkv * c.hd, rng), v = bf16_normals(c.S * c.nkv * c.hd, rng);
    const Tensor gk = be.upload(k, DType::BF16, {c.S, c.nkv, c.hd}), gv = be.upload(v, DType::BF16, {c.S, c.nkv, c.hd});
    // (first, n): a prefill from 0; one row that sees 4 keys (fewer than the
    // kernel's 8 warps); the last row, over the whole cache; a chunk at the end.
    const std::pair<int64_t, int64_t> calls[] = {{0, 5}, {3, 1}, {c.S - 1, 1}, {c.S - 20, 20}};
    for (const auto& [first, n] : calls) {
        INFO("first " << first << " n " << n);
        std::vector<float> q = bf16_normals(n * c.nh * c.hd, rng, 2), out(q.size());
        be.cpu.attention_decode(host_tensor(out, {n, c.nh, c.hd}), host_tensor(q, {n, c.nh, c.hd}),
                                host_tensor(k, {c.S, c.nkv, c.hd}), host_tensor(v, {c.S, c.nkv, c.hd}), first);
        const Tensor gq = be.upload(q, DType::BF16, {n, c.nh, c.hd}), gout = be.zeros(DType::BF16, {n, c.nh, c.hd});
        be.gpu.attention_decode(gout, gq, gk, gv, first);
        const std::vector<float> gpu = be.download(gout);
        require_near("attention_decode", gpu, out, kBf16Rtol, kBf16Atol);
        be.gpu.attention_decode(gout, gq, gk, gv, first);
        REQUIRE(be.download(gout) == gpu);  // a fixed order: the same bits again
    }
}

}  // namespace

TEST_CASE("cuda attention_decode matches the cpu over a cache", "[gpu]") {
    for (const CacheShape& c : {CacheShape{77, 4, 2, 16}, CacheShape{77, 4, 4, 64}, CacheShape{300, 8, 2, 128},
                                CacheShape{33, 2, 1, 256}, CacheShape{50, 4, 2, 48}})
        check_decode(c);
}

TEST_CASE("cuda attention_decode names a head size it does not take", "[gpu]") {
    Backends be;
    const Tensor q = be.zeros(DType::BF16, {1, 2, 264}), kv = be.zeros(DType::BF16, {4, 1, 264});
    const Tensor out = be.zeros(DType::BF16, {1, 2, 264});
    std::string message;
    try {
        be.gpu.attention_decode(out, q, kv, kv, 0);
    } catch (const std::invalid_argument& e) {
        message = e.what();
    }
    INFO(message);
    REQUIRE(message.find("attention_decode: head size 264 is above 256") != std::string::npos);
}
