// Memory, copies, elementwise updates and reductions on
// host buffers.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

void* CpuOps::alloc(size_t bytes) {
    // aligned_alloc wants a multiple of the alignment, and a zero size may give null.
    const size_t rounded = std::max<size_t>(256, (bytes + 255) & ~size_t(255));
    void* p = std::aligned_alloc(256, rounded);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, rounded);
    return p;
}

void CpuOps::release(void* p) { std::free(p); }

// MemAvailable of /proc/meminfo (what the kernel can give without swapping),
// else the free pages.
size_t CpuOps::memory_available() const {
    if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
        char line[256];
        unsigned long long kib = 0;
        bool found = false;
        while (!found && std::fgets(line, sizeof line, f)) found = std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
        std::fclose(f);
        if (found) return size_t(kib) * 1024;
    }
    return size_t(sysconf(_SC_AVPHYS_PAGES)) * size_t(sysconf(_SC_PAGESIZE));
}

void CpuOps::copy_from_host(Tensor dst, const void* src) {
    if (dst.bytes()) std::memcpy(dst.data, src, dst.bytes());
}

void CpuOps::copy_to_host(void* dst, Tensor src) {
    if (src.bytes()) std::memcpy(dst, src.data, src.bytes());
}

void CpuOps::zero(Tensor t) {
    if (t.bytes()) std::memset(t.data, 0, t.bytes());
}

void CpuOps::copy(Tensor dst, Tensor src) {
    if (dst.dtype == src.dtype) {
        check_same_shape("copy", dst, src);
        if (src.bytes()) std::memmove(dst.data, src.data, src.bytes());
        return;
    }
    check(dst.numel() == src.numel(), "copy", "tensors " + dst.shape_str() + " and " + src.shape_str() + " differ");
    dispatch_float(dst, [&](auto dtag) {
        dispatch_float(src, [&](auto stag) {
            using D = std::remove_pointer_t<decltype(dtag)>;
            using S = std::remove_pointer_t<decltype(stag)>;
            D* d = dst.ptr<D>();
            const S* s = src.ptr<S>();
            for (int64_t i = 0; i < dst.numel(); ++i) d[i] = D(s[i]);
        });
    });
}

void CpuOps::add(Tensor y, Tensor x, double alpha) {
    check_same_shape("add", y, x);
    dispatch_float(y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* py = y.ptr<T>();
        const T* px = x.ptr<T>();
        const T a = T(alpha);
        const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static) if (worth_threads(n))
        for (int64_t i = 0; i < n; ++i) py[i] += a * px[i];
    });
}

void CpuOps::add_tensors(Tensor y, Tensor a, Tensor b) {
    check_same_shape("add_tensors", y, a);
    check_same_shape("add_tensors", y, b);
    dispatch_float(y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* py = y.ptr<T>();
        const T* pa = a.ptr<T>();
        const T* pb = b.ptr<T>();
        const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static) if (worth_threads(n))
        for (int64_t i = 0; i < n; ++i) py[i] = pa[i] + pb[i];
    });
}

void CpuOps::scale(Tensor y, double alpha) {
    dispatch_float(y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* py = y.ptr<T>();
        const T a = T(alpha);
        const int64_t n = y.numel();
#pragma omp parallel for simd schedule(static) if (worth_threads(n))
        for (int64_t i = 0; i < n; ++i) py[i] *= a;
    });
}

namespace {

// Sums term(x[i]) in double over at most kMaxChunks chunks whose size depends
// on the length alone, each chunk by one thread, then the chunk sums in
// order: the result never depends on the thread count.
template <class F> double reduce(const Tensor& x, F term) {
    constexpr int64_t kMaxChunks = 64, kMinChunk = 4096;
    const int64_t n = x.numel();
    const int64_t chunk = std::max(kMinChunk, (n + kMaxChunks - 1) / kMaxChunks);
    const int64_t chunks = (n + chunk - 1) / chunk;
    double partial[kMaxChunks] = {};
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* p = x.ptr<T>();
#pragma omp parallel for schedule(static) if (worth_threads(n))
        for (int64_t c = 0; c < chunks; ++c) {
            const int64_t end = std::min(n, (c + 1) * chunk);
            double s = 0;
#pragma omp simd reduction(+ : s)
            for (int64_t i = c * chunk; i < end; ++i) s += term(double(p[i]));
            partial[c] = s;
        }
    });
    double total = 0;
    for (int64_t c = 0; c < chunks; ++c) total += partial[c];
    return total;
}

}  // namespace

std::vector<double> CpuOps::sum_squares(const std::vector<Tensor>& xs) {
    std::vector<double> sums;
    sums.reserve(xs.size());
    for (const Tensor& x : xs) sums.push_back(reduce(x, [](double v) { return v * v; }));
    return sums;
}

double CpuOps::sum(Tensor x) {
    return reduce(x, [](double v) { return v; });
}

}  // namespace moe
