// MoE permutation on the GPU (the semantics of kernels/cpu/permute.cpp):
// permute gathers token rows into expert order; combine and the permute
// backward gather each token's slots, so every output row has one writer;
// the combine backward scatters to rows that belong to one slot each. These
// are bandwidth-bound (permute_forward and permute_backward also move F32
// rows: the router's weights and their gradients, which expert parallelism
// sends with the tokens): rows move as 16-byte chunks of 8 bf16 when H % 8 == 0
// and every row is aligned, else one element at a time. The host cannot see
// the indices without a sync, so a bad one (outside [-1, R) or [0, N)) is
// caught here: what reads through it gets NaN, so the loss shows it, and what
// would write through it is skipped.
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
using cuda::load_chunk;
using cuda::store_chunk;
using cuda::require_dtype;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

bf16* bf16_ptr(const Tensor& t) { return static_cast<bf16*>(t.data); }  // dtype checked by the caller

// xe[r] = x[row_token[r]], one thread per chunk.
template <int W>
__global__ void permute_forward_kernel(bf16* xe, const bf16* x, const int32_t* row_token, int64_t R, int64_t N,
                                       int64_t H) {
    const int64_t chunks = H / W;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < R * chunks;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = i / chunks, col = (i % chunks) * W;
        const int32_t t = row_token[r];
        float v[W];
        if (t >= 0 && t < N) {
            load_chunk<W>(v, x + t * H + col);
        } else {
#pragma unroll
            for (int e = 0; e < W; ++e) v[e] = NAN;
        }
        store_chunk<W>(xe + r * H + col, v);
    }
}

// dst[t] (+)= sum_j w[t,j] src[slot_row[t*k+j]] over kept slots (w null: 1),
// one thread per chunk of a token, its slots added in j order in fp32; then,
// with a residual, dst[t] = residual[t] + that sum rounded to bf16 (the bits
// of a separate add).
template <int W>
__global__ void gather_add_kernel(bf16* dst, const bf16* src, const float* w, const int32_t* slot_row,
                                  const bf16* residual, int64_t N, int64_t R, int64_t H, int k, bool accumulate) {
    const int64_t chunks = H / W;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * chunks;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / chunks, col = (i % chunks) * W;
        float acc[W];
        if (accumulate) {
            load_chunk<W>(acc, dst + t * H + col);
        } else {
#pragma unroll
            for (int e = 0; e < W; ++e) acc[e] = 0;
        }
        for (int j = 0; j < k; ++j) {
            const int32_t r = slot_row[t * k + j];
            if (r < 0) continue;  // dropped
            const float wj = w ? w[t * k + j] : 1.0f;
            float v[W];
            if (r < R) {
                load_chunk<W>(v, src + int64_t(r) * H + col);
            } else {
#pragma unroll
                for (int e = 0; e < W; ++e) v[e] = NAN;
            }
#pragma unroll
            for (int e = 0; e < W; ++e) acc[e] += wj * v[e];
        }
        if (residual) {
            float r[W];
            load_chunk<W>(r, residual + t * H + col);
#pragma unroll
            for (int e = 0; e < W; ++e) acc[e] = r[e] + __bfloat162float(__float2bfloat16_rn(acc[e]));
        }
        store_chunk<W>(dst + t * H + col, acc);
    }
}

// F32 rows (stat: router weights and their gradients, one column): one
// thread per element, the semantics of the two kernels above without w.
__global__ void permute_forward_f32_kernel(float* xe, const float* x, const int32_t* row_token, int64_t R, int64_t N,
                                           int64_t H) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < R * H;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int32_t t = row_token[i / H];
        xe[i] = t >= 0 && t < N ? x[t * H + i % H] : NAN;
    }
}

__global__ void gather_add_f32_kernel(float* dst, const float* src, const int32_t* slot_row, const float* residual,
                                      int64_t N, int64_t R, int64_t H, int k, bool accumulate) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * H;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / H, col = i % H;
        float acc = accumulate ? dst[i] : 0.0f;
        for (int j = 0; j < k; ++j) {
            const int32_t r = slot_row[t * k + j];
            if (r < 0) continue;  // dropped
            acc += r < R ? src[int64_t(r) * H + col] : NAN;
        }
        dst[i] = residual ? residual[i] + acc : acc;
    }
}

// One warp per slot s = t*k+j: dye[r] (+)= w[s] dy[t] and dw[s] += dot(dy[t],
// ye[r]), the dot summed per lane in chunk order then by a fixed shuffle tree.
template <int W>
__global__ void combine_backward_kernel(bf16* dye, float* dw, const bf16* dy, const bf16* ye, const float* w,
                                        const int32_t* slot_row, int64_t slots, int64_t R, int64_t H, int k,
                                        bool accumulate) {
    const int lane = threadIdx.x & 31;
    const int64_t chunks = H / W;
    for (int64_t s = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); s < slots;
         s += int64_t(gridDim.x) * kWarps) {
        const int32_t r = slot_row[s];
        if (r < 0) continue;  // dropped: no gradient
        const bool bad = r >= R;
        const bf16* g = dy + (s / k) * H;
        const float ws = w[s];
        float dot = 0;
        if (!bad)
            for (int64_t ch = lane; ch < chunks; ch += 32) {
                const int64_t col = ch * W;
                float gv[W];
                load_chunk<W>(gv, g + col);
                if (dye) {
                    float d[W];
                    if (accumulate) {
                        load_chunk<W>(d, dye + int64_t(r) * H + col);
                    } else {
#pragma unroll
                        for (int e = 0; e < W; ++e) d[e] = 0;
                    }
#pragma unroll
                    for (int e = 0; e < W; ++e) d[e] += ws * gv[e];
                    store_chunk<W>(dye + int64_t(r) * H + col, d);
                }
                if (dw) {
                    float y[W];
                    load_chunk<W>(y, ye + int64_t(r) * H + col);
#pragma unroll
                    for (int e = 0; e < W; ++e) dot += gv[e] * y[e];
                }
            }
        if (dw) {
            dot = cuda::warp_sum(dot);
            if (lane == 0) dw[s] += bad ? NAN : dot;
        }
    }
}

// a [a_rows,H] and b [b_rows,H].
void check_rows(const char* op, const Tensor& a, const char* a_name, const Tensor& b, const char* b_name,
                int64_t a_rows, int64_t b_rows) {
    check(a.ndim == 2 && b.ndim == 2 && a.dim(0) == a_rows && b.dim(0) == b_rows && a.dim(1) == b.dim(1), op,
          std::string("expected ") + a_name + " [" + std::to_string(a_rows) + ",H] and " + b_name + " [" +
              std::to_string(b_rows) + ",H]; got " + a.shape_str() + " and " + b.shape_str());
}

// The slots of a combine: y (or dy) BF16 [N,H], ye BF16 [R,H], w F32 [N,k],
// slot_row I32 [N*k].
void check_combine(const char* op, const Tensor& y, const char* y_name, const Tensor& ye, const Tensor& w,
                   const Tensor& slot_row) {
    require_dtype(op, y_name, y, DType::BF16);
    require_dtype(op, "ye", ye, DType::BF16);
    require_dtype(op, "w", w, DType::F32);
    require_dtype(op, "slot_row", slot_row, DType::I32);
    check_rows(op, y, y_name, ye, "ye", y.dim(0), ye.dim(0));
    check(w.ndim == 2 && w.dim(0) == y.dim(0) && slot_row.numel() == w.numel(), op,
          "expected w [N,k] and slot_row [N*k] for N = " + std::to_string(y.dim(0)) + "; got " + w.shape_str() +
              " and " + slot_row.shape_str());
}

}  // namespace

void CudaOps::permute_forward(Tensor xe, Tensor x, Tensor row_token) {
    const char* op = "permute_forward";
    check(x.dtype == DType::BF16 || x.dtype == DType::F32, op,
          std::string("x must be BF16 (act) or F32 (stat), got ") + dtype_name(x.dtype));
    require_dtype(op, "xe", xe, x.dtype);
    require_dtype(op, "row_token", row_token, DType::I32);
    const int64_t R = row_token.numel(), N = x.dim(0), H = x.dim(1);
    check_rows(op, xe, "xe", x, "x", R, N);
    if (R == 0 || H == 0) return;
    if (x.dtype == DType::F32) {
        permute_forward_f32_kernel<<<cuda::blocks_for(R * H, kThreads), kThreads, 0, stream()>>>(
            xe.ptr<float>(), x.ptr<float>(), row_token.ptr<int32_t>(), R, N, H);
        MOE_CUDA_LAUNCHED();
        return;
    }
    cuda::with_chunk_width(H, {xe.data, x.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        permute_forward_kernel<W><<<cuda::blocks_for(R * H / W, kThreads), kThreads, 0, stream()>>>(
            bf16_ptr(xe), bf16_ptr(x), row_token.ptr<int32_t>(), R, N, H);
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::permute_backward(Tensor dx, Tensor dxe, Tensor slot_row, Write dx_write, Tensor residual) {
    const char* op = "permute_backward";
    check(dx.dtype == DType::BF16 || dx.dtype == DType::F32, op,
          std::string("dx must be BF16 (act) or F32 (stat), got ") + dtype_name(dx.dtype));
    require_dtype(op, "dxe", dxe, dx.dtype);
    require_dtype(op, "slot_row", slot_row, DType::I32);
    if (dx.empty()) return;
    const int64_t N = dx.dim(0), H = dx.dim(1);
    check(dx.ndim == 2 && dxe.ndim == 2 && dxe.dim(1) == H && N > 0 && slot_row.numel() % N == 0, op,
          "expected dx [N,H], dxe [R,H] and slot_row [N*k]; got " + dx.shape_str() + ", " + dxe.shape_str() +
              " and " + slot_row.shape_str());
    if (!residual.empty()) check_same_shape(op, residual, dx);
    const int64_t R = dxe.dim(0), k = slot_row.numel() / N;
    if (H == 0) return;
    // k may be 0 (no slot: a sum of nothing); the kernels then write 0, or dx, plus the residual.
    if (dx.dtype == DType::F32) {
        gather_add_f32_kernel<<<cuda::blocks_for(N * H, kThreads), kThreads, 0, stream()>>>(
            dx.ptr<float>(), dxe.ptr<float>(), slot_row.ptr<int32_t>(), residual.empty() ? nullptr : residual.ptr<float>(),
            N, R, H, int(k),
            dx_write == Write::add);
        MOE_CUDA_LAUNCHED();
        return;
    }
    cuda::with_chunk_width(H, {dx.data, dxe.data, residual.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        gather_add_kernel<W><<<cuda::blocks_for(N * H / W, kThreads), kThreads, 0, stream()>>>(
            bf16_ptr(dx), bf16_ptr(dxe), nullptr, slot_row.ptr<int32_t>(), bf16_ptr(residual), N, R, H, int(k),
            dx_write == Write::add);
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::combine_forward(Tensor y, Tensor ye, Tensor w, Tensor slot_row, Write y_write, Tensor residual) {
    const char* op = "combine_forward";
    check_combine(op, y, "y", ye, w, slot_row);
    if (!residual.empty()) check_same_shape(op, residual, y);
    const int64_t N = y.dim(0), H = y.dim(1), R = ye.dim(0), k = w.dim(1);
    if (N == 0 || H == 0) return;
    // k may be 0 (no slot: a sum of nothing); the kernel then writes 0, or y, plus the residual.
    cuda::with_chunk_width(H, {y.data, ye.data, residual.data}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        gather_add_kernel<W><<<cuda::blocks_for(N * H / W, kThreads), kThreads, 0, stream()>>>(
            bf16_ptr(y), bf16_ptr(ye), w.ptr<float>(), slot_row.ptr<int32_t>(), bf16_ptr(residual), N, R, H, int(k),
            y_write == Write::add);
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::combine_backward(Tensor dye, Tensor dw, Tensor dy, Tensor ye, Tensor w, Tensor slot_row,
                               Write dye_write) {
    const char* op = "combine_backward";
    require_dtype(op, "dye", dye, DType::BF16);
    require_dtype(op, "dw", dw, DType::F32);
    check_combine(op, dy, "dy", ye, w, slot_row);
    check(dye.empty() || dye.numel() == ye.numel(), op,
          "dye " + dye.shape_str() + " must have the shape of ye " + ye.shape_str());
    check(dw.empty() || dw.numel() == w.numel(), op,
          "dw " + dw.shape_str() + " must have the shape of w " + w.shape_str());
    const int64_t slots = slot_row.numel(), H = dy.dim(1), R = ye.dim(0), k = w.dim(1);
    if ((dye.empty() && dw.empty()) || slots == 0) return;
    float* dw_p = dw.empty() ? nullptr : dw.ptr<float>();
    cuda::with_chunk_width(H, {dye.data, dy.data, ye.data}, [&](auto width) {
        combine_backward_kernel<decltype(width)::value><<<cuda::blocks_for(slots, kWarps), kThreads, 0, stream()>>>(
            bf16_ptr(dye), dw_p, bf16_ptr(dy), bf16_ptr(ye), w.ptr<float>(), slot_row.ptr<int32_t>(), slots, R, H,
            int(k), dye_write == Write::add);
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
