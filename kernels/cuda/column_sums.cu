#include "kernels/cuda/column_sums.h"

#include "kernels/cuda/common.cuh"

namespace moe::cuda {

namespace {

constexpr int64_t kMaxChunks = 4096;
constexpr int kThreads = 256;

// partial[chunk, c] = the chunk's rows of column c, summed in row order.
__global__ void partial_kernel(float* partial, const bf16* a, const bf16* b, const float* row_scale, int64_t R,
                               int64_t D, int64_t rows_per_chunk) {
    const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
    if (c >= D) return;
    const int64_t begin = blockIdx.y * rows_per_chunk, end = min(R, begin + rows_per_chunk);
    float acc = 0;
    for (int64_t r = begin; r < end; ++r) {
        float v = __bfloat162float(a[r * D + c]);
        if (b) v *= __bfloat162float(b[r * D + c]);
        if (row_scale) v *= row_scale[r];
        acc += v;
    }
    partial[blockIdx.y * D + c] = acc;
}

__global__ void finish_kernel(float* out, const float* partial, int64_t chunks, int64_t D, bool accumulate) {
    const int64_t c = blockIdx.x * int64_t(kThreads) + threadIdx.x;
    if (c >= D) return;
    float acc = 0;
    for (int64_t k = 0; k < chunks; ++k) acc += partial[k * D + c];
    out[c] = accumulate ? out[c] + acc : acc;
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
    const unsigned col_blocks = unsigned((D + kThreads - 1) / kThreads);
    partial_kernel<<<dim3(col_blocks, unsigned(chunks)), kThreads, 0, ops.stream()>>>(partial, a, b, row_scale, R, D,
                                                                                      rows_per_chunk);
    MOE_CUDA_LAUNCHED();
    finish_kernel<<<col_blocks, kThreads, 0, ops.stream()>>>(out, partial, chunks, D, write == Write::add);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe::cuda
