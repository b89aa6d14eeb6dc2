// Elementwise ops, dtype conversion and the deterministic
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

// A tensor's blocks in a reduction over many tensors at once.
struct ReduceSlice {
    const void* x;
    int64_t n, chunk, first_block;  // chunk: elements a block sums, a multiple of 4
    bool bf16;                      // else F32
};
static_assert(sizeof(ReduceSlice) % 4 == 0, "the table goes up as 4-byte words");

// term(x[i]) in double over a block's chunk: thread t takes the groups of 4
// elements t, t + blockDim, ... (one 16-byte load of F32 where the tensor is
// aligned for it), then the block's fixed-order sum.
template <bool kSquares>
__device__ __forceinline__ double chunk_sum(const ReduceSlice& s, int64_t begin, int64_t end) {
    const auto term = [](double v) { return kSquares ? v * v : v; };
    double acc = 0;
    const bool vec = !s.bf16 && reinterpret_cast<uintptr_t>(s.x) % 16 == 0;
    for (int64_t i = begin + 4 * int64_t(threadIdx.x); i < end; i += 4 * int64_t(blockDim.x)) {
        if (vec && i + 4 <= end) {
            const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(s.x) + i);
            acc += term(v.x) + term(v.y) + term(v.z) + term(v.w);
            continue;
        }
        for (int64_t j = i; j < min(i + 4, end); ++j)
            acc += term(s.bf16 ? cuda::load(static_cast<const cuda::bf16*>(s.x), j)
                               : cuda::load(static_cast<const float*>(s.x), j));
    }
    return acc;
}

// Block b writes out[b], the sum over its chunk of one tensor, found by a
// binary search over the tensors' first blocks. The blocks and their chunks
// depend on the tensors' sizes alone, so the sums repeat bit for bit.
template <bool kSquares> __global__ void partial_sums_kernel(const ReduceSlice* slices, int count, double* out) {
    __shared__ double shared[32];
    const ReduceSlice s = slices[cuda::slice_of_block(slices, count)];
    const int64_t begin = (blockIdx.x - s.first_block) * s.chunk, end = min(s.n, begin + s.chunk);
    const double sum = cuda::block_sum(chunk_sum<kSquares>(s, begin, end), shared);
    if (threadIdx.x == 0) out[blockIdx.x] = sum;
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

// Sums of each x (or of its squares) in double: per-block partials of all
// the tensors from one launch, read back together and added in block order
// on the host. One launch and one wait per buffer-full of partials (a
// model's gradient norm: one or two), not one launch per tensor.
template <bool kSquares> std::vector<double> reduce_each(CudaOps& ops, const std::vector<Tensor>& xs, const char* op) {
    constexpr int64_t kBlocks = 1024, kMinChunk = 4096;  // kBlocks <= CudaOps::kMaxPartials
    std::vector<double> totals(xs.size(), 0.0);
    std::vector<ReduceSlice> table;
    std::vector<size_t> owner;  // the index in xs of each table entry
    int64_t used = 0;
    const auto run = [&] {
        if (table.empty()) return;
        const size_t bytes = table.size() * sizeof(ReduceSlice);
        auto* device_table = static_cast<ReduceSlice*>(ops.scratch(bytes));
        ops.copy_from_host(Tensor(device_table, DType::I32, {int64_t(bytes / 4)}), table.data());  // no host wait
        partial_sums_kernel<kSquares><<<unsigned(used), kThreads, 0, ops.stream()>>>(device_table, int(table.size()),
                                                                                     ops.partials());
        MOE_CUDA_LAUNCHED();
        MOE_CUDA_CHECK(cudaMemcpyAsync(ops.host_results(), ops.partials(), size_t(used) * sizeof(double),
                                       cudaMemcpyDeviceToHost, ops.stream()));
        MOE_CUDA_CHECK(cudaStreamSynchronize(ops.stream()));
        for (size_t t = 0; t < table.size(); ++t) {
            const int64_t first = table[t].first_block, blocks = (table[t].n + table[t].chunk - 1) / table[t].chunk;
            for (int64_t b = 0; b < blocks; ++b) totals[owner[t]] += ops.host_results()[first + b];
        }
        table.clear();
        owner.clear();
        used = 0;
    };
    for (size_t i = 0; i < xs.size(); ++i) {
        const Tensor& x = xs[i];
        const int64_t n = x.numel();
        if (!n) continue;
        check(x.dtype == DType::F32 || x.dtype == DType::BF16, op,
              std::string("the CUDA backend holds F32 and BF16 tensors here, got ") + dtype_name(x.dtype));
        const int64_t chunk = (std::max(kMinChunk, (n + kBlocks - 1) / kBlocks) + 3) / 4 * 4,
                      blocks = (n + chunk - 1) / chunk;
        if (used + blocks > CudaOps::kMaxPartials) run();
        table.push_back({x.data, n, chunk, used, x.dtype == DType::BF16});
        owner.push_back(i);
        used += blocks;
    }
    run();
    return totals;
}

}  // namespace

std::vector<double> CudaOps::sum_squares(const std::vector<Tensor>& xs) {
    return reduce_each<true>(*this, xs, "sum_squares");
}

double CudaOps::sum(Tensor x) { return reduce_each<false>(*this, {x}, "sum")[0]; }

}  // namespace moe
