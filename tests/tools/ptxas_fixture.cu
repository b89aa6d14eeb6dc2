// Kernels tools/ptxas_check.py must refuse, one for each of its checks
// (the ptxas_check_refuses test, with ptxas_fixture_budgets.txt).

// Capped at 32 registers (two blocks of 1024 threads an SM), it needs 64
// values live at once: spills.
__global__ void __launch_bounds__(1024, 2) spilling_kernel(float* out, const float* in, int n) {
    float a[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) a[i] = in[threadIdx.x * 64 + i];
    float s = 0.f;
    for (int j = 0; j < n; ++j)
#pragma unroll
        for (int i = 0; i < 64; ++i) s += a[i] * a[(i * 7 + j) & 63];
    out[threadIdx.x] = s;
}

// An array indexed at run time lives in local memory: a stack frame.
__global__ void stack_kernel(float* out, const int* idx, int n) {
    float a[256];
    for (int i = 0; i < n; ++i) a[idx[i] & 255] = out[i];
    out[threadIdx.x] = a[idx[threadIdx.x] & 255];
}

// About 30 registers at 1024 threads: two blocks an SM, where the budgets
// file asks three.
__global__ void __launch_bounds__(1024) wide_kernel(float* out, const float* in) {
    float a[24];
#pragma unroll
    for (int i = 0; i < 24; ++i) a[i] = in[threadIdx.x + 1024 * i];
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 24; ++i) s += a[i] * a[23 - i] * float(i);
    out[threadIdx.x] = s;
}

// Named for the wgmma tile family, it holds no wgmma.
struct WarpgroupMma {};
template <class Mma> __global__ void family_kernel(float* out) { out[threadIdx.x] = 1.f; }
template __global__ void family_kernel<WarpgroupMma>(float*);

// A product queued on one side of a branch: ptxas injects warpgroup.arrive
// (C7519) around it.
__global__ void serialized_kernel(float* d, unsigned long long desc, int flag) {
    float acc[8] = {};
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    if (flag) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 "
            "{%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
            : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3]), "+f"(acc[4]), "+f"(acc[5]), "+f"(acc[6]),
              "+f"(acc[7])
            : "l"(desc), "l"(desc));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    for (int i = 0; i < 8; ++i) d[threadIdx.x * 8 + i] = acc[i];
}
