// The 128-byte-swizzled tiles of the wgmma attention kernels (swizzle128.h),
// on the host: every element has its own place, 16-byte chunks stay whole,
// and a descriptor's reads, as the PTX ISA's canonical layouts define them
// (8-row core groups, the leading and stride byte offsets, then the swizzle
// on address bits 4-6 ^= 7-9), land on exactly the elements the kernels
// stored there, k-major (Q K^T's operands) and MN-major (P V's B).
#include <set>
#include <string>

#include "kernels/cuda/swizzle128.h"
#include "tests/catch.h"

using namespace moe;

namespace {

// What the hardware reads at byte `a` of a 1024-byte-aligned tile.
int swizzled(int a) { return a ^ (((a >> 7) & 7) << 4); }

// Byte address of element (n, kk) of a k-major operand (N rows of 16 k; the
// canonical form ((8, n), (8, 2)) with strides ((128 bytes, SBO), (2 bytes,
// 16 bytes))), read from a descriptor starting at `start`.
int k_major_address(int start, int sbo, int n, int kk) {
    return swizzled(start + (n % 8) * swizzle128::kRowBytes + (n / 8) * sbo + kk * 2);
}

// Byte address of element (kk, n) of an MN-major operand (16 k rows of N
// columns; canonical ((64, n), (8, 2)) with strides ((2 bytes, LBO), (128
// bytes, SBO))).
int mn_major_address(int start, int lbo, int sbo, int kk, int n) {
    return swizzled(start + (n % 64) * 2 + (n / 64) * lbo + (kk % 8) * swizzle128::kRowBytes + (kk / 8) * sbo);
}

template <int kRows, int HD> void check_tile() {
    INFO(kRows << " rows of " << HD);
    std::set<int> places;
    for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < HD; ++c) {
            const int at = swizzle128::offset<kRows>(r, c);
            REQUIRE(at >= 0);
            REQUIRE(at < kRows * HD);
            places.insert(at);
            // load_tile copies 8 columns as one 16-byte piece
            REQUIRE(at - swizzle128::offset<kRows>(r, c - c % 8) == c % 8);
            REQUIRE(swizzle128::offset<kRows>(r, c - c % 8) % 8 == 0);
        }
    REQUIRE(places.size() == size_t(kRows) * HD);
}

// A B^T's operands: rows of the tile at columns k..k+15, for every k step.
template <int kRows, int HD> void check_k_major() {
    for (int k = 0; k < HD; k += 16) {
        const int start = swizzle128::k_major_start<kRows>(k);
        for (int n = 0; n < kRows; ++n)
            for (int kk = 0; kk < 16; ++kk) {
                INFO(kRows << " rows of " << HD << ", k " << k << ", row " << n << ", k+" << kk);
                REQUIRE(k_major_address(start, swizzle128::kGroupBytes, n, kk) ==
                        2 * swizzle128::offset<kRows>(n, k + kk));
            }
    }
}

// P B's B: rows k..k+15 of a K-row tile, every column.
template <int K, int HD> void check_mn_major() {
    for (int k = 0; k < K; k += 16) {
        const int start = swizzle128::mn_major_start(k);
        for (int kk = 0; kk < 16; ++kk)
            for (int n = 0; n < HD; ++n) {
                INFO(K << " rows of " << HD << ", rows " << k << "+" << kk << ", column " << n);
                REQUIRE(mn_major_address(start, swizzle128::mn_block_bytes<K>(), swizzle128::kGroupBytes, kk, n) ==
                        2 * swizzle128::offset<K>(k + kk, n));
            }
    }
}

}  // namespace

TEST_CASE("swizzle128 tiles give every element its own place and keep 16-byte chunks whole", "[unit]") {
    check_tile<64, 64>();
    check_tile<64, 128>();
    check_tile<32, 128>();
}

TEST_CASE("swizzle128 k-major descriptors read the elements the tiles hold", "[unit]") {
    check_k_major<64, 64>();   // Q, K, V, dO tiles at hd 64 (64 rows)
    check_k_major<64, 128>();  // 64-row tiles at hd 128: two column blocks
    check_k_major<32, 128>();  // the backward's 32-row tiles at hd 128
}

TEST_CASE("swizzle128 MN-major descriptors read the elements the tiles hold", "[unit]") {
    check_mn_major<64, 64>();
    check_mn_major<64, 128>();
    check_mn_major<32, 128>();
}
