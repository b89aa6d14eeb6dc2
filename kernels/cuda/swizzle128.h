// Where Hopper's 128-byte-swizzled shared-memory tiles keep their bf16
// elements, and the descriptor geometry that reads them back (wgmma.cuh,
// attention_warpgroup_mma.cuh). Host code too: the unit tests check it
// against the PTX ISA's canonical layouts.
//
// A tile of `rows` rows of HD columns (HD a multiple of 64) is kept as
// 64-column blocks one after the other, each `rows` x 128 bytes; row r's
// 16-byte chunk c (8 columns) sits at chunk c ^ (r % 8) of the row. The
// hardware undoes the permutation on address bits (bits 4-6 ^= bits 7-9),
// so tiles start 1024-byte aligned.
#pragma once

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe::swizzle128 {

constexpr int kRowBytes = 128;              // one row of a 64-column block
constexpr int kGroupBytes = 8 * kRowBytes;  // 8 rows: one turn of the permutation

// The element offset of (r, c) in a tile of kRows rows.
template <int kRows> MOE_HOST_DEVICE constexpr int offset(int r, int c) {
    return (c / 64) * kRows * 64 + r * 64 + (((c % 64) / 8) ^ (r % 8)) * 8 + c % 8;
}

// A k-major operand (rows of 16 contiguous k) at columns k..k+15 of a
// kRows-row tile: where its descriptor starts (bytes from the tile), 8-row
// groups kGroupBytes apart.
template <int kRows> MOE_HOST_DEVICE constexpr int k_major_start(int k) {
    return (k / 64) * kRows * kRowBytes + (k % 64) * 2;
}

// An MN-major operand (k rows of contiguous columns) at rows k..k+15 of a
// kRows-row tile: where its descriptor starts, 8-row groups of k
// kGroupBytes apart and 64-column blocks mn_block_bytes apart.
MOE_HOST_DEVICE constexpr int mn_major_start(int k) { return k * kRowBytes; }
template <int kRows> MOE_HOST_DEVICE constexpr int mn_block_bytes() { return kRows * kRowBytes; }

}  // namespace moe::swizzle128
