#include "kernels/cuda/column_sums.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

constexpr int64_t kMaxChunks = 4096;
constexpr int kThreads = 256;
// finish_kernel's threads: 32 columns (a warp reads 32 neighbours of a row)
// times 32 strands of chunks.
constexpr int kCols = 32, kStrands = 32;

// partial[chunk, c] = the chunk's rows of column c, summed in row order. A
// thread takes W neighbouring columns (W = 8: 16-byte loads) of one chunk;
// neighbouring threads take neighbouring columns, then the next chunk, so
// every thread has work however narrow the matrix (D = 64 for the qk-norm
// weights, whose R = N * heads rows make 4096 chunks).
template <int W>
__global__ void __launch_bounds__(kThreads)
    partial_kernel(float* partial, const bf16* a, const bf16* b, const float* row_scale, int64_t R, int64_t D,
                   int64_t rows_per_chunk, int64_t chunks) {
    const int64_t col_groups = D / W;
    for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < chunks * col_groups;
         t += int64_t(gridDim.x) * blockDim.x) {
        const int64_t chunk = t / col_groups, c = t % col_groups * W;
        const int64_t begin = chunk * rows_per_chunk, end = min(R, begin + rows_per_chunk);
        float acc[W] = {};
        for (int64_t r = begin; r < end; ++r) {
            float v[W];
            load_chunk(v, a + r * D + c);
            if (b) {
                float u[W];
                load_chunk(u, b + r * D + c);
#pragma unroll
                for (int e = 0; e < W; ++e) v[e] *= u[e];
            }
            const float scale = row_scale ? row_scale[r] : 1.0f;
#pragma unroll
            for (int e = 0; e < W; ++e) acc[e] += row_scale ? v[e] * scale : v[e];  // as v *= row_scale[r]
        }
        store_chunk(partial + chunk * D + c, acc);  // on 16 bytes: scratch is, and D, c are multiples of W
    }
}

// out[c] (+)= the chunks' sums: strand s adds chunks s, s + 32, ... in order,
// then the strands are added in order.
__global__ void __launch_bounds__(kCols* kStrands)
    finish_kernel(float* out, const float* partial, int64_t chunks, int64_t D, bool accumulate) {
    __shared__ float strand_sums[kStrands][kCols];
    const int col = int(threadIdx.x) % kCols, strand = int(threadIdx.x) / kCols;
    const int64_t c = blockIdx.x * int64_t(kCols) + col;
    float acc = 0;
    if (c < D)
        for (int64_t k = strand; k < chunks; k += kStrands) acc += partial[k * D + c];
    strand_sums[strand][col] = acc;
    __syncthreads();
    if (strand != 0 || c >= D) return;
    float total = 0;
    for (int s = 0; s < kStrands; ++s) total += strand_sums[s][col];
    out[c] = accumulate ? out[c] + total : total;
}

}  // namespace

void column_sums(CudaOps& ops, float* out, Write write, const bf16* a, const bf16* b, const float* row_scale,
                 int64_t R, int64_t D) {
    if (D == 0) return;
    if (R == 0) {
        if (write == Write::overwrite) ops.zero(Tensor(out, DType::F32, {D}));
        return;
    }
    const int64_t rows_per_chunk = std::max<int64_t>(64, (R + kMaxChunks - 1) / kMaxChunks);
    const int64_t chunks = (R + rows_per_chunk - 1) / rows_per_chunk;
    float* partial = static_cast<float*>(ops.scratch(size_t(chunks * D) * sizeof(float)));
    with_chunk_width(D, {a, b}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        partial_kernel<W><<<blocks_for(chunks * (D / W), kThreads), kThreads, 0, ops.stream()>>>(
            partial, a, b, row_scale, R, D, rows_per_chunk, chunks);
    });
    MOE_CUDA_LAUNCHED();
    finish_column_sums(ops, out, write, partial, chunks, D);
}

void finish_column_sums(CudaOps& ops, float* out, Write write, const float* partial, int64_t chunks, int64_t D) {
    if (D == 0) return;
    const unsigned col_blocks = unsigned((D + kCols - 1) / kCols);
    finish_kernel<<<col_blocks, kCols * kStrands, 0, ops.stream()>>>(out, partial, chunks, D, write == Write::add);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe::cuda
