// Hopper's warpgroup MMA (wgmma.mma_async, PTX ISA 8.0, sm_90a only): one
// instruction multiplies a 64-row A by an N-column B over k = 16 for the 4
// warps of a warpgroup, reading its operands from shared memory through
// matrix descriptors (A may come from registers instead) and accumulating
// in fp32 registers. It runs asynchronously: fence, issue, commit, wait.
//
// Fragments: warp w of the warpgroup holds rows 16w..16w+15 of D in the mma
// C layout, d[j][0..1] at row 16w + lane/4, columns 8j + 2(lane%4), +1 and
// d[j][2..3] 8 rows below; an A fragment in registers is mma.sync
// m16n8k16's A fragment of the warp's 16 rows.
//
// Shared tiles use the 128-byte swizzle: rows of 64 bf16 (128 bytes), the
// 16-byte chunk c of row r stored at chunk c ^ (r % 8), each 8-row group
// 1024 bytes from the next and 1024-byte aligned. Wider rows are kept as
// 64-column blocks, one block after the other.
//
// Outside sm_90a builds (where __CUDA_ARCH_FEAT_SM90_ALL is undefined) the
// wrappers trap: the host launches wgmma kernels only where
// cuda_wgmma_available() said the GPU runs them.
#pragma once
#include <cstdint>

namespace moe::cuda::wgmma {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOE_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define MOE_WGMMA_ASM(...) __trap()
#endif

// A descriptor of a 128-byte-swizzled operand at shared address `address`:
// `leading` and `stride` bytes as the PTX ISA's matrix descriptor format
// defines them (K-major: stride = between 8-row groups, leading unused;
// MN-major: leading = between 64-column blocks, stride = between 8-row
// groups of k). Adding n to it moves the start by 16 n bytes.
__device__ __forceinline__ uint64_t descriptor(uint32_t address, uint32_t leading, uint32_t stride) {
    return uint64_t((address & 0x3FFFF) >> 4) | uint64_t(leading >> 4) << 16 | uint64_t(stride >> 4) << 32 |
           uint64_t(1) << 62;  // layout type 1: 128-byte swizzle
}

// Orders this warpgroup's register writes before the wgmma that follow.
__device__ __forceinline__ void fence() { MOE_WGMMA_ASM("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { MOE_WGMMA_ASM("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most `pending` committed groups are still running.
template <int pending> __device__ __forceinline__ void wait() {
    MOE_WGMMA_ASM("wgmma.wait_group.sync.aligned %0;\n" ::"n"(pending) : "memory");
}
// Makes this thread's shared-memory writes (plain stores, cp.async) visible
// to wgmma's reads, which go through the async proxy.
__device__ __forceinline__ void shared_writes_visible() {
    MOE_WGMMA_ASM("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Pins registers in place around the asynchronous instructions: the compiler
// may not move their reads or writes across this point.
template <int N> __device__ __forceinline__ void pin(float (&d)[N][4]) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}
template <int N> __device__ __forceinline__ void pin(uint32_t (&a)[N][4]) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
}

#define MOE_WG_D4(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define MOE_WG_D16(d, j) MOE_WG_D4(d, j), MOE_WG_D4(d, j + 1), MOE_WG_D4(d, j + 2), MOE_WG_D4(d, j + 3)

// d (64 x N) += A B: A (64 x 16) K-major and B (16 x N) K-major (B's N rows
// of 16 contiguous k), both by descriptor.
template <int N> __device__ __forceinline__ void mma_ss(float (&d)[N / 8][4], uint64_t a, uint64_t b) {
    static_assert(N == 32 || N == 64, "the instruction shapes used here");
    if constexpr (N == 32) {
        MOE_WGMMA_ASM(
            "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
            : MOE_WG_D16(d, 0)
            : "l"(a), "l"(b));
    } else {
        MOE_WGMMA_ASM(
            "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
            "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
            : MOE_WG_D16(d, 0), MOE_WG_D16(d, 4)
            : "l"(a), "l"(b));
    }
}

// d (64 x N) += A B: A (64 x 16) in registers (each warp its 16 rows), B
// (16 x N) MN-major (k rows of N contiguous columns) by descriptor.
template <int N> __device__ __forceinline__ void mma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b) {
    static_assert(N == 64 || N == 128, "the instruction shapes used here");
    if constexpr (N == 64) {
        MOE_WGMMA_ASM(
            "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
            "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
            : MOE_WG_D16(d, 0), MOE_WG_D16(d, 4)
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
    } else {
        MOE_WGMMA_ASM(
            "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
            "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "
            "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
            "%62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
            : MOE_WG_D16(d, 0), MOE_WG_D16(d, 4), MOE_WG_D16(d, 8), MOE_WG_D16(d, 12)
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
    }
}

#undef MOE_WG_D16
#undef MOE_WG_D4
#undef MOE_WGMMA_ASM

}  // namespace moe::cuda::wgmma
