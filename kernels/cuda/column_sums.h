// Column sums of a bf16 matrix into fp32, in a fixed order (row chunks, then
// the chunks in order) so the result never depends on scheduling:
//   out[c] (+)= sum_r a[r,c] * (b ? b[r,c] : 1) * (row_scale ? row_scale[r] : 1)
// for a, b [R,D] and row_scale [R], added to out or written over it (zeros
// for R = 0) as write says. Bias gradients (a = dy) and RMSNorm weight
// gradients (a = dy, b = x, row_scale = rstd) use it.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/cuda_ops.h"

namespace moe::cuda {

void column_sums(CudaOps& ops, float* out, Write write, const __nv_bfloat16* a, const __nv_bfloat16* b,
                 const float* row_scale, int64_t R, int64_t D);

// The second half, for a kernel that made the chunks' sums itself while it
// read the rows for another output: out[c] (+)= sum_k partial[k, c] over the
// chunks k < chunks, in the fixed order above.
void finish_column_sums(CudaOps& ops, float* out, Write write, const float* partial, int64_t chunks, int64_t D);

}  // namespace moe::cuda
