// Elementwise ops, dtype conversion, column concat and the deterministic
// reductions (sum, sum of squares) of the CUDA backend. Elementwise kernels
// take F32 or BF16 and compute in fp32.
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
constexpr int kThreads = 256;

// Calls fn with a null pointer of t's element type (float or bf16).
template <class F> void dispatch_f32_bf16(const char* op, const Tensor& t, F&& fn) {
    switch (t.dtype) {
        case DType::F32: fn(static_cast<float*>(nullptr)); return;
        case DType::BF16: fn(static_cast<bf16*>(nullptr)); return;
        default:
            throw std::invalid_argument(std::string(op) + ": the CUDA backend takes F32 or BF16 here, got " +
                                        dtype_name(t.dtype));
    }
}

template <class D, class S> __global__ void convert_kernel(D* dst, const S* src, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        cuda::store(dst, i, cuda::load(src, i));
}

template <class T> __global__ void add_kernel(T* y, const T* x, float alpha, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        cuda::store(y, i, cuda::load(y, i) + alpha * cuda::load(x, i));
}

// y = a + b in chunks of W elements (W = 8: 16-byte accesses).
template <int W, class T> __global__ void add_tensors_kernel(T* y, const T* a, const T* b, int64_t chunks) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < chunks;
         i += int64_t(gridDim.x) * blockDim.x) {
        if constexpr (W == 8) {
            float va[W], vb[W];
            cuda::load_chunk<W>(va, a + i * W);
            cuda::load_chunk<W>(vb, b + i * W);
#pragma unroll
            for (int e = 0; e < W; ++e) va[e] += vb[e];
            cuda::store_chunk<W>(y + i * W, va);
        } else {
            cuda::store(y, i, cuda::load(a, i) + cuda::load(b, i));
        }
    }
}

template <class T> __global__ void scale_kernel(T* y, float alpha, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        cuda::store(y, i, alpha * cuda::load(y, i));
}

// Block b sums term(x[i]) in double over its fixed chunk of i; the launch
// (grid and block size) depends on n alone, so the result is reproducible.
template <class T, bool kSquares> __global__ void partial_sums_kernel(const T* x, int64_t n, int64_t chunk, double* out) {
    __shared__ double shared[32];
    const int64_t begin = blockIdx.x * chunk, end = min(n, begin + chunk);
    double s = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const double v = cuda::load(x, i);
        s += kSquares ? v * v : v;
    }
    s = cuda::block_sum(s, shared);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// Column ranges [0, A) of out from a and [A, A+B) from b, or the reverse
// (split) when kSplit: one thread per chunk of W elements of out (W = 8 for
// bf16 when A, B and the pointers allow: 16-byte accesses; a chunk then never
// straddles a and b).
template <int W, class T, bool kSplit>
__global__ void concat_kernel(T* out, T* a, T* b, int64_t N, int64_t A, int64_t B) {
    const int64_t cols = A + B, n = N * cols / W;
    for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = k * W, row = i / cols, col = i % cols;
        T* part = col < A ? a : b;
        if (!part) continue;  // split into an unwanted gradient
        const int64_t j = col < A ? row * A + col : row * B + col - A;
        float v[W];
        cuda::load_chunk(v, part + j);
        if (kSplit) {
            float d[W];
            cuda::load_chunk(d, out + i);
#pragma unroll
            for (int e = 0; e < W; ++e) v[e] += d[e];
            cuda::store_chunk(part + j, v);
        } else {
            cuda::store_chunk(out + i, v);
        }
    }
}

// Calls launch with the chunk width: 8 for bf16 when both column ranges and
// every pointer allow it, else 1.
template <class T, class Launch>
void with_concat_width(int64_t A, int64_t B, std::initializer_list<const void*> ptrs, Launch&& launch) {
    if constexpr (std::is_same_v<T, bf16>)
        if (cuda::chunks_of_8(A, ptrs) && B % 8 == 0) return launch(std::integral_constant<int, 8>());
    launch(std::integral_constant<int, 1>());
}

}  // namespace

void CudaOps::zero(Tensor t) {
    if (t.bytes()) MOE_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.bytes(), stream_));
}

void CudaOps::copy(Tensor dst, Tensor src) {
    check(dst.numel() == src.numel(), "copy", "tensors " + dst.shape_str() + " and " + src.shape_str() + " differ");
    if (!src.bytes()) return;
    if (dst.dtype == src.dtype) {
        MOE_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.bytes(), cudaMemcpyDeviceToDevice, stream_));
        return;
    }
    const int64_t n = src.numel();
    dispatch_f32_bf16("copy", dst, [&](auto dtag) {
        dispatch_f32_bf16("copy", src, [&](auto stag) {
            using D = std::remove_pointer_t<decltype(dtag)>;
            using S = std::remove_pointer_t<decltype(stag)>;
            convert_kernel<<<cuda::blocks_for(n, kThreads, 4096), kThreads, 0, stream_>>>(
                static_cast<D*>(dst.data), static_cast<const S*>(src.data), n);
        });
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::add(Tensor y, Tensor x, double alpha) {
    check_same_shape("add", y, x);
    const int64_t n = y.numel();
    if (!n) return;
    dispatch_f32_bf16("add", y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        add_kernel<<<cuda::blocks_for(n, kThreads, 4096), kThreads, 0, stream_>>>(
            static_cast<T*>(y.data), static_cast<const T*>(x.data), float(alpha), n);
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::add_tensors(Tensor y, Tensor a, Tensor b) {
    check_same_shape("add_tensors", y, a);
    check_same_shape("add_tensors", y, b);
    const int64_t n = y.numel();
    if (!n) return;
    dispatch_f32_bf16("add_tensors", y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        auto* py = static_cast<T*>(y.data);
        const auto* pa = static_cast<const T*>(a.data);
        const auto* pb = static_cast<const T*>(b.data);
        if constexpr (std::is_same_v<T, bf16>) {
            cuda::with_chunk_width(n, {py, pa, pb}, [&](auto width) {
                constexpr int W = decltype(width)::value;
                add_tensors_kernel<W, T><<<cuda::blocks_for(n / W, kThreads, 4096), kThreads, 0, stream_>>>(
                    py, pa, pb, n / W);
            });
        } else {
            add_tensors_kernel<1, T><<<cuda::blocks_for(n, kThreads, 4096), kThreads, 0, stream_>>>(py, pa, pb, n);
        }
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::scale(Tensor y, double alpha) {
    const int64_t n = y.numel();
    if (!n) return;
    dispatch_f32_bf16("scale", y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        scale_kernel<<<cuda::blocks_for(n, kThreads, 4096), kThreads, 0, stream_>>>(static_cast<T*>(y.data),
                                                                                      float(alpha), n);
    });
    MOE_CUDA_LAUNCHED();
}

namespace {

// Sums of each x (or of its squares) in double: per-block partials, packed
// for many tensors into the partials buffer, read back together and added in
// block order on the host. One wait per buffer-full (the grad norm of a
// model: one), not one per tensor.
template <bool kSquares> std::vector<double> reduce_each(CudaOps& ops, const std::vector<Tensor>& xs, const char* op) {
    constexpr int64_t kBlocks = 1024, kMinChunk = 4096;  // kBlocks <= CudaOps::kMaxPartials
    std::vector<double> totals(xs.size(), 0.0);
    struct Pending {
        size_t index;
        int64_t first, blocks;
    };
    std::vector<Pending> pending;
    int64_t used = 0;
    const auto read_back = [&] {
        if (!used) return;
        MOE_CUDA_CHECK(cudaMemcpyAsync(ops.host_results(), ops.partials(), size_t(used) * sizeof(double),
                                       cudaMemcpyDeviceToHost, ops.stream()));
        MOE_CUDA_CHECK(cudaStreamSynchronize(ops.stream()));
        for (const Pending& p : pending)
            for (int64_t b = 0; b < p.blocks; ++b) totals[p.index] += ops.host_results()[p.first + b];
        pending.clear();
        used = 0;
    };
    for (size_t i = 0; i < xs.size(); ++i) {
        const Tensor& x = xs[i];
        const int64_t n = x.numel();
        if (!n) continue;
        const int64_t chunk = std::max(kMinChunk, (n + kBlocks - 1) / kBlocks), blocks = (n + chunk - 1) / chunk;
        if (used + blocks > CudaOps::kMaxPartials) read_back();
        dispatch_f32_bf16(op, x, [&](auto tag) {
            using T = std::remove_pointer_t<decltype(tag)>;
            partial_sums_kernel<T, kSquares><<<unsigned(blocks), kThreads, 0, ops.stream()>>>(
                static_cast<const T*>(x.data), n, chunk, ops.partials() + used);
        });
        MOE_CUDA_LAUNCHED();
        pending.push_back({i, used, blocks});
        used += blocks;
    }
    read_back();
    return totals;
}

}  // namespace

std::vector<double> CudaOps::sum_squares(const std::vector<Tensor>& xs) {
    return reduce_each<true>(*this, xs, "sum_squares");
}

double CudaOps::sum(Tensor x) { return reduce_each<false>(*this, {x}, "sum")[0]; }

void CudaOps::concat_cols_forward(Tensor out, Tensor a, Tensor b) {
    const int64_t N = out.dim(0), A = a.row_size(), B = b.row_size();
    check(a.dim(0) == N && b.dim(0) == N && out.row_size() == A + B && a.dtype == out.dtype && b.dtype == out.dtype,
          "concat_cols_forward",
          "out " + out.shape_str() + " is not [a | b] of " + a.shape_str() + " and " + b.shape_str());
    if (!out.numel()) return;
    dispatch_f32_bf16("concat_cols_forward", out, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        with_concat_width<T>(A, B, {out.data, a.data, b.data}, [&](auto width) {
            constexpr int W = decltype(width)::value;
            concat_kernel<W, T, false><<<cuda::blocks_for(out.numel() / W, kThreads, 4096), kThreads, 0, stream_>>>(
                static_cast<T*>(out.data), static_cast<T*>(a.data), static_cast<T*>(b.data), N, A, B);
        });
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::concat_cols_backward(Tensor da, Tensor db, Tensor dout) {
    if (da.empty() && db.empty()) return;
    const int64_t N = dout.dim(0), W = dout.row_size();
    const int64_t A = da.empty() ? W - db.row_size() : da.row_size(), B = W - A;
    check((da.empty() || (da.dim(0) == N && da.dtype == dout.dtype)) &&
              (db.empty() || (db.dim(0) == N && db.row_size() == B && db.dtype == dout.dtype)) && B >= 0,
          "concat_cols_backward",
          "dout " + dout.shape_str() + " is not [da | db] of " + da.shape_str() + " and " + db.shape_str());
    if (!dout.numel()) return;
    dispatch_f32_bf16("concat_cols_backward", dout, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        with_concat_width<T>(A, B, {dout.data, da.data, db.data}, [&](auto width) {
            constexpr int W = decltype(width)::value;
            concat_kernel<W, T, true><<<cuda::blocks_for(dout.numel() / W, kThreads, 4096), kThreads, 0, stream_>>>(
                static_cast<T*>(dout.data), static_cast<T*>(da.data), static_cast<T*>(db.data), N, A, B);
        });
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
