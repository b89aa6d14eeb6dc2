// Models of the PTX instructions the attention kernels and fast_math.cuh
// use, for emulated blocks (emulated_block.h): each computes what the PTX ISA
// says the instruction leaves in each thread's registers. Warp- and
// warpgroup-wide ones exchange operands through per-thread slots between two
// barriers.
//
//   ldmatrix .x4 (.trans)      four 8x8 b16 matrices from 32 row addresses
//   mma.sync m16n8k16 bf16     the fragment layouts of the PTX ISA
//   shfl.sync.bfly             a value from lane ^ mask
//   wgmma m64nNk16 bf16        A and B by descriptor (128-byte swizzle,
//                              k-major or MN-major) or A from registers; the
//                              result lands when wgmma.wait_group lands its
//                              commit group: until then the accumulator holds
//                              NaN, so a kernel that reads it early fails its
//                              test, and one that changes a register A
//                              fragment a product reads stops with an error
//   cp.async                   a copy at once (wait_group has nothing to do)
//   ex2.approx.ftz             2^x, rcp.approx.ftz 1/x, lg2.approx.ftz
//   rcp.approx.ftz             log2 x, with .ftz's subnormals (zeros of
//   lg2.approx.ftz             their sign in and out): exact, where the GPU's
//                              are within a few ulp (fast_math.cuh); with
//                              MOE_EMULATED_APPROX=bounds, each finite
//                              nonzero result moved by its whole error bound
//                              (tests/gpu/fast_math_probe.h, which
//                              gpu_cuda_fast_math checks on the GPU), up or
//                              down by a hash of the input, so that a test
//                              passing so holds its tolerance for any result
//                              the GPU may give, not only the exact one
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/emulated/emulated_block.h"
#include "tests/gpu/fast_math_probe.h"

namespace moe::emulated {

constexpr int kMaxThreads = 1024;  // a block of CUDA's largest size

// Operands a thread offers to its warp or warpgroup.
inline uint64_t slots[kMaxThreads][8];
inline const void* pointer_slots[kMaxThreads];

inline float bf16_bits_to_float(uint16_t u) {
    __nv_bfloat16_raw raw;
    raw.x = u;
    return __bfloat162float(__nv_bfloat16(raw));
}
inline uint16_t bits_of(const __nv_bfloat16& b) { return __nv_bfloat16_raw(b).x; }
// Half h (0 low, 1 high) of a register of two bf16.
inline float half_of(uint64_t r, int h) { return bf16_bits_to_float(uint16_t(h ? r >> 16 : r & 0xFFFF)); }

// .ftz: subnormal inputs and results are zeros of their sign.
inline float flush(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.f, x) : x; }

// MOE_EMULATED_APPROX, read once: exact (the default) or bounds; anything
// else stops with the choices.
inline bool approx_at_bounds() {
    static const bool bounds = [] {
        const char* v = std::getenv("MOE_EMULATED_APPROX");
        const std::string s = v ? v : "exact";
        if (s != "exact" && s != "bounds")
            throw std::invalid_argument("MOE_EMULATED_APPROX=" + s + ": expected exact or bounds");
        return s == "bounds";
    }();
    return bounds;
}

// Whether the error of the result for input x goes up: a fixed pseudo-random
// choice by x's bits, so equal inputs give equal results.
inline bool error_up(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    return (bits * 0x9E3779B1u) >> 31;
}

// y moved `ulps` representable floats up or down (finite nonzero y only).
inline float off_by_ulps(float y, int ulps, bool up) {
    if (!approx_at_bounds() || y == 0 || !std::isfinite(y)) return y;
    for (int i = 0; i < ulps; ++i) y = std::nextafter(y, up ? HUGE_VALF : -HUGE_VALF);
    return y;
}

namespace bounds = test::fast_math_bounds;
// The exact value: correctly rounded, through double (rounding twice can
// differ from once only where the double lands on a tie between floats).
inline float exp2_ftz(float x) {
    return flush(off_by_ulps(float(std::exp2(double(flush(x)))), bounds::kExp2Ulps, error_up(x)));
}
inline float rcp_ftz(float x) { return flush(off_by_ulps(1.f / flush(x), bounds::kRcpUlps, error_up(x))); }
inline float log2_ftz(float x) {
    const double exact = std::log2(double(flush(x)));
    const float y = float(exact);
    if (!approx_at_bounds() || !std::isfinite(y)) return y;
    if (x < 0.5f || x > 2.f) return off_by_ulps(y, bounds::kLog2Ulps, error_up(x));
    return float(exact + (error_up(x) ? bounds::kLog2NearOne : -bounds::kLog2NearOne));
}

inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p, bool trans) {
    pointer_slots[threadIdx.x] = p;
    warp_barrier();
    const int l = lane(), w0 = warp() * 32;
    auto row = [&](int i) { return static_cast<const __nv_bfloat16*>(pointer_slots[w0 + i]); };
    for (int i = 0; i < 4; ++i) {
        // matrix i: rows from lanes 8i..8i+7; this lane gets row l/4, columns 2(l%4), +1 (of the transpose)
        const uint16_t lo = trans ? bits_of(row(8 * i + 2 * (l % 4))[l / 4]) : bits_of(row(8 * i + l / 4)[2 * (l % 4)]);
        const uint16_t hi =
            trans ? bits_of(row(8 * i + 2 * (l % 4) + 1)[l / 4]) : bits_of(row(8 * i + l / 4)[2 * (l % 4) + 1]);
        r[i] = uint32_t(lo) | uint32_t(hi) << 16;
    }
    warp_barrier();
}

// A of a 16 x 16 fragment (mma.sync's, and each warp's share of wgmma's
// register A): element (row, k) of the warp whose slots start at w0.
inline float fragment_a(int w0, int row, int k) {
    return half_of(slots[w0 + (row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
}

inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    uint64_t* s = slots[threadIdx.x];
    for (int i = 0; i < 4; ++i) s[i] = a[i];
    s[4] = b0;
    s[5] = b1;
    warp_barrier();
    const int l = lane(), w0 = warp() * 32;
    float d[4];
    for (int e = 0; e < 4; ++e) {
        const int row = l / 4 + 8 * (e >= 2), col = 2 * (l % 4) + (e & 1);
        float sum = c[e];
        for (int k = 0; k < 16; ++k)
            sum += fragment_a(w0, row, k) * half_of(slots[w0 + col * 4 + (k % 8) / 2][4 + (k >= 8)], k % 2);
        d[e] = sum;
    }
    warp_barrier();
    std::copy(d, d + 4, c);
}

// A barrier of the lanes in `mask` (each of them calls it).
inline void syncwarp(unsigned mask = 0xffffffffu) { barrier(1 + warp(), __builtin_popcount(mask)); }

// Each lane of `mask` offers x; every lane's offer, bit for bit (lanes
// outside the mask: 0). The warp collectives are this and a choice.
template <class T> std::array<uint64_t, 32> offers(unsigned mask, T x) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "one slot");
    slots[threadIdx.x][0] = 0;
    std::memcpy(slots[threadIdx.x], &x, sizeof x);
    syncwarp(mask);
    std::array<uint64_t, 32> all{};
    for (int l = 0; l < 32; ++l)
        if (mask >> l & 1) all[size_t(l)] = slots[warp() * 32 + l][0];
    syncwarp(mask);
    return all;
}
// x of lane `from` (shfl.sync idx, bfly, up: the caller names the lane).
template <class T> T shfl(unsigned mask, T x, int from) {
    const uint64_t v = offers(mask, x)[size_t(from & 31)];
    T out;
    std::memcpy(&out, &v, sizeof out);
    return out;
}

// ---- wgmma ----------------------------------------------------------------

struct Descriptor {
    uint32_t start, leading, stride;
};
inline Descriptor decode(uint64_t d) {
    if (d >> 62 != 1) throw std::runtime_error("emulated wgmma: a descriptor without the 128-byte swizzle");
    return {uint32_t(d & 0x3FFF) << 4, uint32_t((d >> 16) & 0x3FFF) << 4, uint32_t((d >> 32) & 0x3FFF) << 4};
}
// The element at byte `a` of shared memory as the 128-byte swizzle reads it.
inline float swizzled_at(uint32_t a) {
    uint16_t u;
    std::memcpy(&u, shared_at(a ^ (((a >> 7) & 7) << 4)), 2);
    return bf16_bits_to_float(u);
}
// The canonical layouts: 8-row core groups `stride` bytes apart; rows of
// 128 bytes; MN-major 64-column blocks `leading` bytes apart.
inline float k_major(const Descriptor& d, int mn, int k) {
    return swizzled_at(d.start + (mn % 8) * 128 + (mn / 8) * d.stride + k * 2);
}
inline float mn_major(const Descriptor& d, int k, int mn) {
    return swizzled_at(d.start + (mn % 64) * 2 + (mn / 64) * d.leading + (k % 8) * 128 + (k / 8) * d.stride);
}

// Products in flight, per thread: an accumulator's values until its group
// lands, and the register A fragments its products read, which may not
// change until then. Products join the open group; commit closes it;
// wait_group(n) lands every closed group but the n latest.
struct InFlight {
    float* registers;
    std::vector<float> values;
    std::vector<std::pair<const uint32_t*, std::array<uint32_t, 4>>> fragments;
    long group = -1;  // -1: the open group
};
inline std::vector<InFlight> in_flight[kMaxThreads];
inline long groups_closed[kMaxThreads];

inline InFlight& accumulator(float* registers, int n) {
    for (InFlight& f : in_flight[threadIdx.x])
        if (f.registers == registers) {
            f.group = -1;  // a product on an accumulator in flight follows the ones before it
            return f;
        }
    in_flight[threadIdx.x].push_back({registers, std::vector<float>(registers, registers + n), {}});
    return in_flight[threadIdx.x].back();
}
inline void wgmma_commit() {
    const long g = groups_closed[threadIdx.x]++;
    for (InFlight& f : in_flight[threadIdx.x])
        if (f.group < 0) f.group = g;
}
inline void wgmma_wait(int pending) {
    std::vector<InFlight>& all = in_flight[threadIdx.x];
    const long landing = groups_closed[threadIdx.x] - pending;  // groups before this one land
    for (const InFlight& f : all) {
        if (f.group < 0 || f.group >= landing) continue;
        for (const auto& [registers, read] : f.fragments)
            if (!std::equal(read.begin(), read.end(), registers))
                throw std::runtime_error("emulated wgmma: an A fragment changed while a product read it");
        std::copy(f.values.begin(), f.values.end(), f.registers);
    }
    const auto landed = [&](const InFlight& f) { return f.group >= 0 && f.group < landing; };
    all.erase(std::remove_if(all.begin(), all.end(), landed), all.end());
}

// d (64 x N) += A B over k 16; a(row, k) and b(k, col) give the operands
// (rows of this thread's warpgroup: warp w of it holds rows 16w..16w+15).
template <int N, class A, class B> void wgmma(float (&d)[N / 8][4], A a, B b) {
    const int l = lane(), w = warp() % 4;
    float* acc = accumulator(&d[0][0], N / 2).values.data();
    for (int j = 0; j < N / 8; ++j)
        for (int e = 0; e < 4; ++e) {
            const int row = 16 * w + l / 4 + 8 * (e >= 2), col = 8 * j + 2 * (l % 4) + (e & 1);
            float sum = acc[4 * j + e];
            for (int k = 0; k < 16; ++k) sum += a(row, k) * b(k, col);
            acc[4 * j + e] = sum;
        }
    std::fill(&d[0][0], &d[0][0] + N / 2, std::nanf(""));
}

template <int N> void wgmma_ss(float (&d)[N / 8][4], uint64_t a_descriptor, uint64_t b_descriptor) {
    const Descriptor a = decode(a_descriptor), b = decode(b_descriptor);
    wgmma<N>(d, [&](int row, int k) { return k_major(a, row, k); }, [&](int k, int col) { return k_major(b, col, k); });
}

template <int N>
void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_descriptor, bool b_mn_major) {
    uint64_t* s = slots[threadIdx.x];
    for (int i = 0; i < 4; ++i) s[i] = a[i];
    warpgroup_barrier();
    const Descriptor b = decode(b_descriptor);
    const int w0 = warpgroup() * 128;  // its warps' slots
    accumulator(&d[0][0], N / 2).fragments.push_back({a, {a[0], a[1], a[2], a[3]}});
    wgmma<N>(
        d, [&](int row, int k) { return fragment_a(w0 + (row / 16) * 32, row % 16, k); },
        [&](int k, int col) { return b_mn_major ? mn_major(b, k, col) : k_major(b, col, k); });
    warpgroup_barrier();
}

}  // namespace moe::emulated

#define __shfl_xor_sync(mask, x, lane_mask) ::moe::emulated::shfl(mask, x, ::moe::emulated::lane() ^ (lane_mask))
using std::max;  // device code's min and max
using std::min;
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
