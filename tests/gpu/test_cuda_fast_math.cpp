// fast_math.cuh's approximations on the GPU against exact values: within the
// error bounds that kernels/cuda/fast_math.cuh states and the emulator's
// MOE_EMULATED_APPROX=bounds applies, so the emulated_approx_bounds test's
// verdict holds for this GPU. The largest errors seen are reported.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tests/gpu/fast_math_probe.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

// Floats in order as integers: neighbours differ by 1, across binades and 0.
int64_t ordinal(float x) {
    int32_t bits;
    std::memcpy(&bits, &x, 4);
    return bits < 0 ? -int64_t(bits & 0x7FFFFFFF) : int64_t(bits);
}

// How many floats got is from the correctly rounded `exact` (the ulps CUDA
// states its functions' errors in).
double ulps_off(float got, double exact) { return double(std::llabs(ordinal(got) - ordinal(float(exact)))); }

// Half a unit in the last place of a float at exact value y: what rounding
// the result to fp32 adds to an absolute error.
double half_ulp(double y) { return y == 0 ? 0 : std::ldexp(1.0, std::ilogb(y) - 24); }

// n values evenly over [lo, hi).
std::vector<float> sweep(double lo, double hi, int n) {
    std::vector<float> x;
    for (int i = 0; i < n; ++i) x.push_back(float(lo + (hi - lo) * i / n));
    return x;
}

// n values m 2^e: m's 23 fraction bits scattered by a multiplicative hash, e
// over [e_lo, e_hi] in turn; every other one negative if `signed_`.
std::vector<float> magnitudes(int e_lo, int e_hi, int n, bool signed_) {
    std::vector<float> x;
    for (int i = 0; i < n; ++i) {
        const double m = 1.0 + std::ldexp(double((uint32_t(i) * 2654435761u) >> 9), -23);
        const float v = float(std::ldexp(m, e_lo + i % (e_hi - e_lo + 1)));
        x.push_back(signed_ && i / (e_hi - e_lo + 1) % 2 ? -v : v);
    }
    return x;
}

bool normal(double y) { return std::isfinite(y) && std::fabs(y) >= 0x1p-126; }

// f at each of x, on the GPU.
std::vector<float> on_gpu(Backends& b, FastMath f, const std::vector<float>& x) {
    const int64_t n = int64_t(x.size());
    const Tensor in = b.upload(x, DType::F32, {n}), out = b.zeros(DType::F32, {n});
    fast_math_on_gpu(f, out.ptr<float>(), in.ptr<float>(), n, b.gpu.stream());
    return b.download(out);
}

}  // namespace

TEST_CASE("fast_math's 2^x, 1/x and log2 on the GPU are within the bounds the emulator applies", "[gpu]") {
    namespace bounds = fast_math_bounds;
    Backends b;

    const std::vector<float> xe = sweep(-125.9, 127.9, 1 << 20);
    const std::vector<float> ye = on_gpu(b, FastMath::exp2, xe);
    double exp2_ulps = 0;
    for (size_t i = 0; i < xe.size(); ++i) {
        const double exact = std::exp2(double(xe[i]));
        if (normal(exact) && exact < 0x1p128) exp2_ulps = std::max(exp2_ulps, ulps_off(ye[i], exact));
    }

    const std::vector<float> xr = magnitudes(-125, 125, 1 << 20, true);
    const std::vector<float> yr = on_gpu(b, FastMath::rcp, xr);
    double rcp_ulps = 0;
    for (size_t i = 0; i < xr.size(); ++i) {
        const double exact = 1.0 / double(xr[i]);
        if (normal(exact)) rcp_ulps = std::max(rcp_ulps, ulps_off(yr[i], exact));
    }

    const std::vector<float> xn = sweep(0.5, 2.0, 1 << 20), xf = magnitudes(-125, 126, 1 << 20, false);
    const std::vector<float> yn = on_gpu(b, FastMath::log2, xn), yf = on_gpu(b, FastMath::log2, xf);
    double log2_near = 0, log2_ulps = 0;
    for (size_t i = 0; i < xn.size(); ++i) {  // beyond the bound by at most fp32's rounding of the result
        const double exact = std::log2(double(xn[i]));
        log2_near = std::max(log2_near, std::fabs(yn[i] - exact) - half_ulp(exact));
    }
    for (size_t i = 0; i < xf.size(); ++i) {
        const double exact = std::log2(double(xf[i]));
        if (xf[i] < 0.5f || xf[i] > 2.f) log2_ulps = std::max(log2_ulps, ulps_off(yf[i], exact));
    }

    WARN("largest errors on this GPU: 2^x " << exp2_ulps << " ulp, 1/x " << rcp_ulps << " ulp, log2 "
                                            << log2_near << " absolute in [0.5, 2] and " << log2_ulps
                                            << " ulp elsewhere");
    CHECK(exp2_ulps <= bounds::kExp2Ulps);
    CHECK(rcp_ulps <= bounds::kRcpUlps);
    CHECK(log2_near <= bounds::kLog2NearOne);
    CHECK(log2_ulps <= bounds::kLog2Ulps);
}
