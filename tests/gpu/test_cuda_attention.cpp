// The CUDA attention and RoPE ops against the CPU reference on the same
// bf16-exact inputs: causal GQA attention forward and backward at sizes that
// leave partial 64-row tiles, every supported head size, the backward's
// accumulation, bit-identical reruns, each with both tile-math families where
// the GPU has wgmma (else mma.sync alone), the choice between them, blocks of
// several query heads against one, q, k, v and their gradients in the
// stacked projection's rows as whole tensors, RoPE both ways (forward from a
// first position too, on some heads of each row) and the backward's dq and
// dk turned back through it, and the fused projection's output split into
// heads and joined.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/attention_shape.h"
#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

std::string describe(const Shape& d) {
    return "B " + std::to_string(d.B) + " T " + std::to_string(d.T) + " nh " + std::to_string(d.nh) + " nkv " +
           std::to_string(d.nkv) + " hd " + std::to_string(d.hd);
}

// T 77 and 130 leave partial tiles; nkv < nh groups query heads; hd 128 takes
// the backward's 32-row tiles.
const Shape kShapes[] = {{2, 77, 4, 2, 32}, {2, 130, 4, 4, 64}, {1, 77, 4, 2, 128}, {1, 40, 2, 1, 16}};

// One attention call's operands: host values (bf16-exact) and their device
// copies.
struct Operands {
    Shape d;
    std::vector<float> q, k, v;
    Tensor gq, gk, gv;

    Operands(Backends& be, const Shape& d_, Rng& rng)
        : d(d_),
          q(bf16_normals(d.q_size(), rng)),
          k(bf16_normals(d.kv_size(), rng)),
          v(bf16_normals(d.kv_size(), rng)) {
        gq = be.upload(q, DType::BF16, {d.B, d.T, d.nh, d.hd});
        gk = be.upload(k, DType::BF16, {d.B, d.T, d.nkv, d.hd});
        gv = be.upload(v, DType::BF16, {d.B, d.T, d.nkv, d.hd});
    }
    Tensor cq() { return host_tensor(q, {d.B, d.T, d.nh, d.hd}); }
    Tensor ck() { return host_tensor(k, {d.B, d.T, d.nkv, d.hd}); }
    Tensor cv() { return host_tensor(v, {d.B, d.T, d.nkv, d.hd}); }
};

// The attention kernels to test: mma.sync everywhere, and wgmma where this
// GPU and build have it.
std::vector<bool> wgmma_choices() {
    CudaOps gpu(0);
    if (!gpu.wgmma_available()) {
        WARN("no wgmma on this GPU or build: the wgmma attention kernels are not tested");
        return {false};
    }
    return {false, true};
}

const char* family(bool wgmma) { return wgmma ? "wgmma" : "mma.sync"; }

double max_abs(const std::vector<float>& a) {
    double m = 0;
    for (float x : a) m = std::max(m, std::fabs(double(x)));
    return m;
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
    return m;
}

// Looser than kBf16Rtol alone: the tensor cores take P (in P V, P^T dO) and
// dS (in dS K, dS^T Q) rounded to bf16, each term relative to itself, so an
// element whose terms cancel keeps an error of the terms' size, not its own:
// at most 2^-8 of a p-weighted mean of |v| in the forward, and of that order
// of the largest gradient entries in the backward. Hence atol = 2^-8 * scale,
// with scale max |v| for out and the largest change for a gradient; rtol
// kBf16Rtol covers the output's own rounding.
void require_attention_near(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu,
                            double scale) {
    require_near(what, gpu, cpu, kBf16Rtol, scale / 256);
}

void check_forward(const Shape& d, bool wgmma) {
    INFO(describe(d) << ", " << family(wgmma));
    Backends be;
    be.gpu.set_attention_wgmma(wgmma);
    Rng rng(1, "cuda attention forward");
    Operands x(be, d, rng);
    std::vector<float> out(size_t(d.q_size())), lse(size_t(d.lse_size()));
    be.cpu.attention_forward(host_tensor(out, {d.B, d.T, d.nh, d.hd}), host_tensor(lse, {d.B, d.nh, d.T}), x.cq(),
                             x.ck(), x.cv());
    Tensor gout = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), glse = be.zeros(DType::F32, {d.B, d.nh, d.T});
    be.gpu.attention_forward(gout, glse, x.gq, x.gk, x.gv);
    require_attention_near("out", be.download(gout), out, max_abs(x.v));
    // fp32 on both sides from the same bf16 products, summed in other orders
    // (and exp2 on the GPU): a few fp32 roundings of values near log T.
    require_near("lse", be.download(glse), lse, 1e-5, 1e-5);
}

// dq, dk, dv start from non-zero values on both backends (the op adds to
// them); dk is left out when !with_dk; with a RoPE theta, q and k are taken
// as rotated and dq, dk turned back.
void check_backward(const Shape& d, bool with_dk, Write write, bool wgmma,
                    std::optional<double> rope_theta = std::nullopt) {
    INFO(describe(d) << (with_dk ? "" : ", no dk") << (write == Write::add ? ", adding" : ", overwriting") << ", "
                     << family(wgmma) << (rope_theta ? ", through RoPE" : ""));
    Backends be;
    be.gpu.set_attention_wgmma(wgmma);
    Rng rng(2, "cuda attention backward");
    Operands x(be, d, rng);
    std::vector<float> dout = bf16_normals(d.q_size(), rng);
    // out and lse from the CPU forward, out rounded to bf16: both backwards
    // read the same values, so this checks the backward alone.
    std::vector<float> out(size_t(d.q_size())), lse(size_t(d.lse_size()));
    be.cpu.attention_forward(host_tensor(out, {d.B, d.T, d.nh, d.hd}), host_tensor(lse, {d.B, d.nh, d.T}), x.cq(),
                             x.ck(), x.cv());
    for (float& o : out) o = round_bf16(o);
    const std::vector<float> dq0 = bf16_normals(d.q_size(), rng), dk0 = bf16_normals(d.kv_size(), rng),
                             dv0 = bf16_normals(d.kv_size(), rng);

    std::vector<float> dq = dq0, dk = dk0, dv = dv0;
    be.cpu.attention_backward(
        host_tensor(dq, {d.B, d.T, d.nh, d.hd}), with_dk ? host_tensor(dk, {d.B, d.T, d.nkv, d.hd}) : Tensor(),
        host_tensor(dv, {d.B, d.T, d.nkv, d.hd}), host_tensor(dout, {d.B, d.T, d.nh, d.hd}), x.cq(), x.ck(), x.cv(),
        host_tensor(out, {d.B, d.T, d.nh, d.hd}), host_tensor(lse, {d.B, d.nh, d.T}), write, rope_theta);

    Tensor gdq = be.upload(dq0, DType::BF16, {d.B, d.T, d.nh, d.hd});
    Tensor gdk = with_dk ? be.upload(dk0, DType::BF16, {d.B, d.T, d.nkv, d.hd}) : Tensor();
    Tensor gdv = be.upload(dv0, DType::BF16, {d.B, d.T, d.nkv, d.hd});
    be.gpu.attention_backward(gdq, gdk, gdv, be.upload(dout, DType::BF16, {d.B, d.T, d.nh, d.hd}), x.gq, x.gk, x.gv,
                              be.upload(out, DType::BF16, {d.B, d.T, d.nh, d.hd}),
                              be.upload(lse, DType::F32, {d.B, d.nh, d.T}), write, rope_theta);
    // The terms' scale is that of what the op adds (or writes).
    const auto change = [&](const std::vector<float>& after, const std::vector<float>& before) {
        return write == Write::add ? max_abs_difference(after, before) : max_abs(after);
    };
    require_attention_near("dq", be.download(gdq), dq, change(dq, dq0));
    if (with_dk) require_attention_near("dk", be.download(gdk), dk, change(dk, dk0));
    require_attention_near("dv", be.download(gdv), dv, change(dv, dv0));
}

}  // namespace

TEST_CASE("cuda attention_forward matches the cpu", "[gpu]") {
    for (bool wgmma : wgmma_choices())
        for (const Shape& d : kShapes) check_forward(d, wgmma);
}

TEST_CASE("cuda attention_backward adds or writes the cpu's gradients", "[gpu]") {
    for (bool wgmma : wgmma_choices())
        for (Write write : {Write::add, Write::overwrite}) {
            for (const Shape& d : kShapes) check_backward(d, true, write, wgmma);
            check_backward(kShapes[1], false, write, wgmma);
        }
}

TEST_CASE("cuda attention_backward turns dq and dk back through RoPE as rope_backward does", "[gpu]") {
    // Every head size: a thread turns the pairs (i, i + hd/2) it holds.
    for (bool wgmma : wgmma_choices()) {
        for (const Shape& d : kShapes) check_backward(d, true, Write::overwrite, wgmma, 10000.0);
        check_backward(kShapes[1], true, Write::add, wgmma, 500000.0);
    }
}

TEST_CASE("cuda attention matches the cpu over the benchmarks' 2048 positions", "[gpu]") {
    // T and hd of configs/bench (32 tiles of 64; the forward and the dq kernel
    // walk up to 32 key tiles, the dk/dv kernel 32 query tiles of each of the
    // group's 4 query heads), one sequence and one kv head to keep the CPU
    // reference short; the backward through RoPE, as the model runs it.
    const Shape d{1, 2048, 4, 1, 64};
    for (bool wgmma : wgmma_choices()) {
        check_forward(d, wgmma);
        check_backward(d, true, Write::overwrite, wgmma, 10000.0);
    }
}

namespace {

// Forward and backward twice on the same inputs, and the backward without dk.
void check_reruns(bool wgmma) {
    INFO(family(wgmma));
    const Shape d{2, 200, 4, 2, 64};
    Backends be;
    be.gpu.set_attention_wgmma(wgmma);
    Rng rng(3, "cuda attention reruns");
    Operands x(be, d, rng);
    const std::vector<float> dout = bf16_normals(d.q_size(), rng), dq0 = bf16_normals(d.q_size(), rng),
                             dk0 = bf16_normals(d.kv_size(), rng), dv0 = bf16_normals(d.kv_size(), rng);
    Tensor gdout = be.upload(dout, DType::BF16, {d.B, d.T, d.nh, d.hd});
    struct Run {
        std::vector<float> out, lse, dq, dk, dv;
    };
    // with_dk false leaves dk out: dq and dv do not depend on it.
    auto run = [&](bool with_dk) {
        Tensor out = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), lse = be.zeros(DType::F32, {d.B, d.nh, d.T});
        be.gpu.attention_forward(out, lse, x.gq, x.gk, x.gv);
        Tensor dq = be.upload(dq0, DType::BF16, {d.B, d.T, d.nh, d.hd});
        Tensor dk = with_dk ? be.upload(dk0, DType::BF16, {d.B, d.T, d.nkv, d.hd}) : Tensor();
        Tensor dv = be.upload(dv0, DType::BF16, {d.B, d.T, d.nkv, d.hd});
        be.gpu.attention_backward(dq, dk, dv, gdout, x.gq, x.gk, x.gv, out, lse, Write::add, std::nullopt);
        return Run{be.download(out), be.download(lse), be.download(dq), with_dk ? be.download(dk) : dk0,
                   be.download(dv)};
    };
    const Run a = run(true), b = run(true), no_dk = run(false);
    REQUIRE(a.out == b.out);
    REQUIRE(a.lse == b.lse);
    REQUIRE(a.dq == b.dq);
    REQUIRE(a.dk == b.dk);
    REQUIRE(a.dv == b.dv);
    REQUIRE(no_dk.dq == a.dq);
    REQUIRE(no_dk.dv == a.dv);
}

// Forward and backward (dq, dk, dv written) of d with blocks of at most
// `heads` query heads: their results.
std::vector<std::vector<float>> run_with_heads(const Shape& d, bool wgmma, int heads) {
    Backends be;
    be.gpu.set_attention_wgmma(wgmma);
    be.gpu.set_attention_heads(heads);
    Rng rng(4, "cuda attention heads a block");
    Operands x(be, d, rng);
    Tensor out = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), lse = be.zeros(DType::F32, {d.B, d.nh, d.T});
    be.gpu.attention_forward(out, lse, x.gq, x.gk, x.gv);
    Tensor dq = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), dk = be.zeros(DType::BF16, {d.B, d.T, d.nkv, d.hd});
    Tensor dv = be.zeros(DType::BF16, {d.B, d.T, d.nkv, d.hd});
    be.gpu.attention_backward(dq, dk, dv, be.upload(bf16_normals(d.q_size(), rng), DType::BF16, {d.B, d.T, d.nh, d.hd}),
                              x.gq, x.gk, x.gv, out, lse, Write::overwrite, std::nullopt);
    return {be.download(out), be.download(lse), be.download(dq), be.download(dk), be.download(dv)};
}

// What constructing a CudaOps throws ("" when it does not).
std::string construction_error() {
    try {
        CudaOps gpu(0);
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("cuda attention gives the same bits on every run", "[gpu]") {
    for (bool wgmma : wgmma_choices()) check_reruns(wgmma);
}

// A forward or dq block takes up to 4 query heads of a kv group, a
// warpgroup each, on wgmma (2 at hd 128): group 4 at hd 64 (4 heads a block;
// 4 key tiles, so the dq kernel's three K and V buffers are refilled),
// group 8 at hd 128 (2 heads, 4 blocks a kv head), both against the CPU, and
// with blocks of 1, 2 and 4 heads at most, the same bits.
TEST_CASE("cuda attention blocks of several query heads give the bits of one head a block", "[gpu]") {
    const Shape shapes[] = {{1, 200, 8, 2, 64}, {1, 77, 8, 1, 128}};
    for (bool wgmma : wgmma_choices())
        for (const Shape& d : shapes) {
            check_forward(d, wgmma);
            check_backward(d, true, Write::overwrite, wgmma);
            INFO(describe(d) << ", " << family(wgmma));
            const std::vector<std::vector<float>> one = run_with_heads(d, wgmma, 1);
            REQUIRE(run_with_heads(d, wgmma, 2) == one);
            REQUIRE(run_with_heads(d, wgmma, 4) == one);
        }
}

TEST_CASE("MOE_CUDA_ATTENTION_HEADS sets the query heads an attention block takes at most", "[gpu]") {
    REQUIRE(CudaOps(0).attention_heads() == CudaOps::kMaxAttentionHeads);
    {
        ScopedEnv env("MOE_CUDA_ATTENTION_HEADS", "2");
        REQUIRE(CudaOps(0).attention_heads() == 2);
    }
    {
        ScopedEnv env("MOE_CUDA_ATTENTION_HEADS", "3");
        REQUIRE(construction_error().find("MOE_CUDA_ATTENTION_HEADS=3 is not a choice") != std::string::npos);
    }
    CudaOps gpu(0);
    REQUIRE_THROWS_AS(gpu.set_attention_heads(8), std::invalid_argument);
    gpu.set_attention_heads(1);
    REQUIRE(gpu.attention_heads() == 1);
}

TEST_CASE("cuda attention runs wgmma on a Hopper GPU of an sm_90a build as the environment allows", "[gpu]") {
    cudaDeviceProp prop{};
    REQUIRE(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
    const std::string archs = MOE_CUDA_ARCHITECTURES;  // the build's CMAKE_CUDA_ARCHITECTURES
    const bool hopper_build = archs.find("90a") != std::string::npos && prop.major == 9 && prop.minor == 0;
    INFO(prop.name << ", compute " << prop.major << "." << prop.minor << ", built for " << archs);
    {
        CudaOps gpu(0);
        REQUIRE(gpu.wgmma_available() == hopper_build);
        REQUIRE(gpu.attention_wgmma() == hopper_build);  // the default: wgmma where it runs
        gpu.set_attention_wgmma(false);
        REQUIRE_FALSE(gpu.attention_wgmma());
        if (!hopper_build) REQUIRE_THROWS_AS(gpu.set_attention_wgmma(true), std::invalid_argument);
    }
    {
        ScopedEnv env("MOE_CUDA_ATTENTION", "mma_sync");
        REQUIRE_FALSE(CudaOps(0).attention_wgmma());
    }
    {
        ScopedEnv env("MOE_CUDA_ATTENTION", "wgmma");
        if (hopper_build)
            REQUIRE(CudaOps(0).attention_wgmma());
        else
            REQUIRE(construction_error().find("MOE_CUDA_ATTENTION=wgmma, but") != std::string::npos);
    }
    {
        ScopedEnv env("MOE_CUDA_ATTENTION", "fast");
        REQUIRE(construction_error().find("MOE_CUDA_ATTENTION=fast is not a choice") != std::string::npos);
    }
}

TEST_CASE("cuda attention names the head sizes it supports", "[gpu]") {
    const Shape d{1, 8, 2, 1, 48};
    Backends be;
    Tensor q = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), kv = be.zeros(DType::BF16, {d.B, d.T, d.nkv, d.hd});
    Tensor out = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), lse = be.zeros(DType::F32, {d.B, d.nh, d.T});
    std::string message;
    try {
        be.gpu.attention_forward(out, lse, q, kv, kv);
    } catch (const std::invalid_argument& e) {
        message = e.what();
    }
    INFO(message);
    REQUIRE(message.find("16, 32, 64 and 128") != std::string::npos);
    REQUIRE(message.find("hd 48") != std::string::npos);
}

namespace {

// q, k and v side by side in rows of nh + 2 nkv + 1 heads (as the stacked
// projection holds them, with one head more that no kernel may touch): the
// kernels give the bits they give on whole tensors, and write dq, dk, dv into
// such rows with the bits they write whole.
void check_stacked_rows(const Shape& d, bool wgmma) {
    INFO(describe(d) << ", " << family(wgmma));
    Backends be;
    be.gpu.set_attention_wgmma(wgmma);
    Rng rng(8, "cuda attention stacked rows");
    const int64_t row = d.nh + 2 * d.nkv + 1, positions = d.B * d.T;
    const auto whole = [&](const std::vector<float>& r, int64_t first, int64_t count) {
        return heads_apart(r, positions, row, first, count, d.hd);
    };
    const std::vector<float> rows = bf16_normals(positions * row * d.hd, rng);
    const Tensor packed = be.upload(rows, DType::BF16, {d.B, d.T, row, d.hd});
    const Heads pq(packed, 0, d.nh), pk(packed, d.nh, d.nkv), pv(packed, d.nh + d.nkv, d.nkv);
    const Tensor q = be.upload(whole(rows, 0, d.nh), DType::BF16, {d.B, d.T, d.nh, d.hd});
    const Tensor k = be.upload(whole(rows, d.nh, d.nkv), DType::BF16, {d.B, d.T, d.nkv, d.hd});
    const Tensor v = be.upload(whole(rows, d.nh + d.nkv, d.nkv), DType::BF16, {d.B, d.T, d.nkv, d.hd});

    Tensor out = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), lse = be.zeros(DType::F32, {d.B, d.nh, d.T});
    Tensor out_p = be.zeros(DType::BF16, {d.B, d.T, d.nh, d.hd}), lse_p = be.zeros(DType::F32, {d.B, d.nh, d.T});
    be.gpu.attention_forward(out, lse, q, k, v);
    be.gpu.attention_forward(out_p, lse_p, pq, pk, pv);
    REQUIRE(be.download(out_p) == be.download(out));
    REQUIRE(be.download(lse_p) == be.download(lse));

    const Tensor dout = be.upload(bf16_normals(d.q_size(), rng), DType::BF16, {d.B, d.T, d.nh, d.hd});
    for (const std::optional<double> theta : {std::optional<double>{}, std::optional<double>{10000.0}})
        for (const Write write : {Write::overwrite, Write::add}) {
            INFO((theta ? "rope, " : "no rope, ") << (write == Write::add ? "adding" : "overwriting"));
            const std::vector<float> before = bf16_normals(positions * row * d.hd, rng);
            Tensor dq = be.upload(whole(before, 0, d.nh), DType::BF16, {d.B, d.T, d.nh, d.hd});
            Tensor dk = be.upload(whole(before, d.nh, d.nkv), DType::BF16, {d.B, d.T, d.nkv, d.hd});
            Tensor dv = be.upload(whole(before, d.nh + d.nkv, d.nkv), DType::BF16, {d.B, d.T, d.nkv, d.hd});
            be.gpu.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, write, theta);
            const Tensor g = be.upload(before, DType::BF16, {d.B, d.T, row, d.hd});
            be.gpu.attention_backward(Heads(g, 0, d.nh), Heads(g, d.nh, d.nkv), Heads(g, d.nh + d.nkv, d.nkv), dout,
                                      pq, pk, pv, out, lse, write, theta);
            const std::vector<float> grads = be.download(g);
            REQUIRE(whole(grads, 0, d.nh) == be.download(dq));
            REQUIRE(whole(grads, d.nh, d.nkv) == be.download(dk));
            REQUIRE(whole(grads, d.nh + d.nkv, d.nkv) == be.download(dv));
            REQUIRE(whole(grads, row - 1, 1) == whole(before, row - 1, 1));  // the extra head is untouched
        }
    REQUIRE(be.download(packed) == rows);
}

}  // namespace

TEST_CASE("cuda attention on q, k, v in stacked rows gives whole tensors' bits", "[gpu]") {
    for (bool wgmma : wgmma_choices())
        for (const Shape& d : {Shape{1, 77, 4, 2, 64}, Shape{1, 40, 2, 1, 16}}) check_stacked_rows(d, wgmma);
}

TEST_CASE("cuda rope matches the cpu both ways, and from a first position", "[gpu]") {
    const int64_t B = 2, T = 77, H = 4;
    const double theta = 10000;
    Backends be;
    Rng rng(4, "cuda rope");
    // The forward from position 1000 and 1077 too: a decoder's rows deep in
    // its cache, angles of thousands of radians, past the positions the
    // backend's table has (it grows twice). hd = 64 turns 16-byte chunks,
    // hd = 12 element by element (and makes the table anew).
    struct Case {
        bool forward;
        int64_t first;
    };
    for (const int64_t hd : {64, 12}) {
        const std::vector<float> x = bf16_normals(B * T * H * hd, rng);
        for (const Case& c : {Case{true, 0}, Case{false, 0}, Case{true, 1000}, Case{true, 1077}}) {
            std::vector<float> cpu = x;
            Tensor gpu = be.upload(x, DType::BF16, {B, T, H, hd});
            if (c.forward) {
                be.cpu.rope_forward(host_tensor(cpu, {B, T, H, hd}), theta, c.first);
                be.gpu.rope_forward(gpu, theta, c.first);
            } else {
                be.cpu.rope_backward(host_tensor(cpu, {B, T, H, hd}), theta);
                be.gpu.rope_backward(gpu, theta);
            }
            INFO("hd " << hd << ", first position " << c.first);
            // Same double angles, fp32 rotation: only the output's bf16 rounding differs.
            require_near(c.forward ? "rope_forward" : "rope_backward", be.download(gpu), cpu, kBf16Rtol, kBf16Atol);
        }
    }
}

TEST_CASE("cuda split_qkv copies the heads out, join_qkv puts them back, rope turns q, k where they lie", "[gpu]") {
    const int64_t B = 2, T = 77, nh = 4, nkv = 2, G = nh + 2 * nkv;
    const double theta = 10000;
    Backends be;
    Rng rng(6, "cuda qkv");
    // hd 64 moves 16-byte chunks, hd 12 element by element.
    for (const int64_t hd : {64, 12}) {
        INFO("hd " << hd);
        std::vector<float> x = bf16_normals(B * T * G * hd, rng);
        const Tensor qkv = be.upload(x, DType::BF16, {B, T, G, hd});
        Tensor q = be.zeros(DType::BF16, {B, T, nh, hd}), k = be.zeros(DType::BF16, {B, T, nkv, hd}),
               v = be.zeros(DType::BF16, {B, T, nkv, hd});
        std::vector<float> cq(size_t(B * T * nh * hd)), ck(size_t(B * T * nkv * hd)), cv(ck.size());
        be.cpu.split_qkv(host_tensor(cq, {B, T, nh, hd}), host_tensor(ck, {B, T, nkv, hd}),
                         host_tensor(cv, {B, T, nkv, hd}), host_tensor(x, {B, T, G, hd}));
        be.gpu.split_qkv(q, k, v, qkv);
        REQUIRE(be.download(q) == cq);
        REQUIRE(be.download(k) == ck);
        REQUIRE(be.download(v) == cv);
        Tensor joined = be.zeros(DType::BF16, {B, T, G, hd});
        be.gpu.join_qkv(joined, q, k, v);
        REQUIRE(be.download(joined) == x);
        // RoPE on the q and k heads of the stacked rows: the bits of the
        // copies turned, and the v heads as they were.
        const std::vector<float> q_unturned = cq;
        be.gpu.rope_forward(Heads(joined, 0, nh + nkv), theta, 0);
        be.gpu.rope_forward(q, theta, 0);
        be.gpu.rope_forward(k, theta, 0);
        std::vector<float> turned = be.download(joined);
        be.cpu.split_qkv(host_tensor(cq, {B, T, nh, hd}), host_tensor(ck, {B, T, nkv, hd}),
                         host_tensor(cv, {B, T, nkv, hd}), host_tensor(turned, {B, T, G, hd}));
        REQUIRE(be.download(q) == cq);
        REQUIRE(be.download(k) == ck);
        REQUIRE(be.download(v) == cv);
        REQUIRE(cq != q_unturned);
    }
}

TEST_CASE("cuda rope's table is kept across calls and grows by doubling", "[gpu]") {
    Backends be;
    const float* table = be.gpu.rope_table(77, 64, 10000);
    REQUIRE(be.gpu.rope_table_positions() == 77);
    REQUIRE(be.gpu.rope_table(50, 64, 10000) == table);  // fewer positions: the same table
    table = be.gpu.rope_table(78, 64, 10000);            // one more, as a decoder's next token
    REQUIRE(be.gpu.rope_table_positions() == 154);
    REQUIRE(be.gpu.rope_table(154, 64, 10000) == table);
    be.gpu.rope_table(10, 12, 10000);  // another hd: made anew for what is asked
    REQUIRE(be.gpu.rope_table_positions() == 10);
    be.gpu.rope_table(10, 12, 500000);  // another theta likewise
    REQUIRE(be.gpu.rope_table_positions() == 10);
}
