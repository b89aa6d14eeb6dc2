// The CUDA attention kernels (kernels/cuda/attention.cu, both tile-math
// families) run on emulated blocks (tests/emulated) against the CPU op on
// bf16-exact inputs, as the gpu tests run them on a GPU: forward, backward
// written and added, head sizes 16 to 128, partial tiles, grouped heads. A
// machine without a GPU checks the kernels' logic here; what the hardware
// does with it, the gpu tests check.
#include "kernels/cuda/attention_kernels.inc"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"

using namespace moe;

namespace {

using bf16 = __nv_bfloat16;

struct Case {
    int B, T, nh, nkv;
};

std::vector<float> bf16_normals(size_t n, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    std::vector<float> v(n);
    for (float& x : v) x = __bfloat162float(__float2bfloat16_rn(normal(rng)));
    return v;
}
std::vector<bf16> to_bf16(const std::vector<float>& v) {
    std::vector<bf16> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = __float2bfloat16_rn(v[i]);
    return b;
}
std::vector<float> to_float(const std::vector<bf16>& b) {
    std::vector<float> v(b.size());
    for (size_t i = 0; i < b.size(); ++i) v[i] = __bfloat162float(b[i]);
    return v;
}
double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::max(m, std::fabs(double(x)));
    return m;
}

// The gpu tests' tolerance: bf16's own rounding, and 2^-8 of the terms'
// scale for P and dS rounded to bf16 before the tensor cores. NaN fails.
void require_near(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                  double scale) {
    size_t outside = 0, first = 0;
    for (size_t i = 0; i < want.size(); ++i)
        if (!(std::fabs(double(got[i]) - want[i]) <= scale / 256 + std::fabs(double(want[i])) / 128) && !outside++)
            first = i;
    INFO(what << ": " << outside << " of " << want.size() << " outside, the first at " << first << ": "
              << (outside ? got[first] : 0.f) << " for " << (outside ? want[first] : 0.f));
    REQUIRE(outside == 0);
}

template <class Mma, int HD> void check(const Case& c, bool accumulate) {
    INFO((std::is_same_v<Mma, WarpMma> ? "mma.sync" : "wgmma") << ", hd " << HD << ", B " << c.B << " T " << c.T
                                                                << " nh " << c.nh << " nkv " << c.nkv
                                                                << (accumulate ? ", adding" : ", writing"));
    std::mt19937 rng(unsigned(7 * HD + c.T));
    const int64_t nq = int64_t(c.B) * c.T * c.nh * HD, nk = int64_t(c.B) * c.T * c.nkv * HD,
                  nl = int64_t(c.B) * c.nh * c.T;
    std::vector<float> q = bf16_normals(size_t(nq), rng), k = bf16_normals(size_t(nk), rng),
                       v = bf16_normals(size_t(nk), rng), dout = bf16_normals(size_t(nq), rng);
    const auto rows = [&](std::vector<float>& x, int heads) {
        return Tensor(x.data(), DType::F32, {c.B, c.T, heads, HD});
    };
    std::vector<float> out(static_cast<size_t>(nq)), lse(static_cast<size_t>(nl));
    const Tensor lse_t(lse.data(), DType::F32, {c.B, c.nh, c.T});
    CpuOps cpu;
    cpu.attention_forward(rows(out, c.nh), lse_t, rows(q, c.nh), rows(k, c.nkv), rows(v, c.nkv));

    const std::vector<bf16> qb = to_bf16(q), kb = to_bf16(k), vb = to_bf16(v), dob = to_bf16(dout);
    const float scale = float(1.0 / std::sqrt(double(HD)));
    const Shape s{c.T, c.nh, c.nkv, scale, scale * kLog2e};
    const unsigned tiles = unsigned((c.T + kTile - 1) / kTile);
    std::vector<bf16> gout(static_cast<size_t>(nq));
    std::vector<float> glse(static_cast<size_t>(nl));
    emulated::launch(dim3(unsigned(c.B * c.nh), tiles), kThreads,
                     5 * size_t(Mma::template tile_elements<HD, kTile>()) * 2 + alignment_slack<Mma>(), [&] {
                         attention_forward_kernel<Mma, HD>(gout.data(), glse.data(), qb.data(), kb.data(), vb.data(),
                                                           s);
                     });
    require_near("out", to_float(gout), out, max_abs(v));
    for (size_t i = 0; i < lse.size(); ++i) REQUIRE(std::fabs(glse[i] - lse[i]) <= 1e-5 + 1e-6 * std::fabs(lse[i]));

    // The backward from the CPU's out (rounded to bf16) and lse, onto
    // gradients that hold values already where it adds.
    for (float& o : out) o = __bfloat162float(__float2bfloat16_rn(o));
    const std::vector<float> dq0 = bf16_normals(size_t(nq), rng), dk0 = bf16_normals(size_t(nk), rng),
                             dv0 = bf16_normals(size_t(nk), rng);
    std::vector<float> dq = dq0, dk = dk0, dv = dv0;
    cpu.attention_backward(rows(dq, c.nh), rows(dk, c.nkv), rows(dv, c.nkv), rows(dout, c.nh), rows(q, c.nh),
                           rows(k, c.nkv), rows(v, c.nkv), rows(out, c.nh), lse_t,
                           accumulate ? Write::add : Write::overwrite);
    std::vector<float> delta(static_cast<size_t>(nl));  // what attention_delta_kernel computes
    for (int b = 0; b < c.B; ++b)
        for (int t = 0; t < c.T; ++t)
            for (int h = 0; h < c.nh; ++h) {
                float acc = 0;
                for (int d = 0; d < HD; ++d) {
                    const size_t i = ((size_t(b) * c.T + t) * c.nh + h) * HD + d;
                    acc += dout[i] * out[i];
                }
                delta[(size_t(b) * c.nh + h) * c.T + t] = acc;
            }
    std::vector<bf16> gdq = to_bf16(dq0), gdk = to_bf16(dk0), gdv = to_bf16(dv0);
    constexpr int kRows = kBwdRows<HD>;
    const size_t tile_bytes = (2 * size_t(Mma::template tile_elements<HD, kTile>()) +
                               4 * size_t(Mma::template tile_elements<HD, kRows>())) *
                                  2 +
                              alignment_slack<Mma>();
    emulated::launch(dim3(unsigned(c.B * c.nkv), tiles), kThreads, tile_bytes + 4 * kRows * sizeof(float), [&] {
        attention_dkdv_kernel<Mma, HD>(gdk.data(), gdv.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(),
                                       delta.data(), s, accumulate);
    });
    emulated::launch(dim3(unsigned(c.B * c.nh), tiles), kThreads, tile_bytes, [&] {
        attention_dq_kernel<Mma, HD>(gdq.data(), qb.data(), kb.data(), vb.data(), dob.data(), lse.data(),
                                     delta.data(), s, accumulate);
    });
    // The terms' scale: what the op adds or writes.
    const auto change = [&](const std::vector<float>& after, const std::vector<float>& before) {
        double m = 0;
        for (size_t i = 0; i < after.size(); ++i)
            m = std::max(m, std::fabs(double(after[i]) - (accumulate ? before[i] : 0.f)));
        return m;
    };
    require_near("dq", to_float(gdq), dq, change(dq, dq0));
    require_near("dk", to_float(gdk), dk, change(dk, dk0));
    require_near("dv", to_float(gdv), dv, change(dv, dv0));
}

// T 77 and 130 leave partial 64-row tiles; nkv < nh groups query heads.
const Case kCases[] = {{1, 77, 4, 2}, {2, 130, 2, 2}};

}  // namespace

TEST_CASE("emulated mma.sync attention kernels match the cpu op", "[unit]") {
    for (const Case& c : kCases) {
        check<WarpMma, 16>(c, false);
        check<WarpMma, 32>(c, true);
        check<WarpMma, 64>(c, false);
        check<WarpMma, 128>(c, true);
    }
}

TEST_CASE("emulated wgmma attention kernels match the cpu op", "[unit]") {
    for (const Case& c : kCases) {
        check<WarpgroupMma, 64>(c, false);
        check<WarpgroupMma, 128>(c, true);
    }
    // Six tiles of keys, four query heads a kv head: the pipelines' buffers
    // and the dk/dv kernel's walk over the group's heads.
    check<WarpgroupMma, 64>({1, 333, 4, 1}, true);
}
