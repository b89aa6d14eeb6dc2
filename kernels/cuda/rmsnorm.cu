// RMSNorm on the GPU: x, y, dx, dy and w in bf16 (w a working copy), rstd in
// fp32, statistics and dw in fp32. One warp per row for y and dx, in 16-byte
// chunks where D and the pointers allow; dw is a fixed-order column reduction
// (column_sums.h).
#include "kernels/cuda/column_sums.h"
#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
constexpr int kWarps = 8;  // rows per block

// Calls f(k, j) for a lane's chunks j = lane + 32 k of a row of n chunks. With
// C > 0 the row fits in C chunks a lane and k is unrolled, so arrays indexed by
// k stay in registers; C = 0 is a plain loop (k = 0) for any n.
template <int C, class F> __device__ __forceinline__ void lane_chunks(int lane, int n, F&& f) {
    if constexpr (C > 0) {
#pragma unroll
        for (int k = 0; k < C; ++k)
            if (lane + 32 * k < n) f(k, lane + 32 * k);
    } else {
        for (int j = lane; j < n; j += 32) f(0, j);
    }
}

// A row's values a lane keeps between the two passes when C > 0 (C chunks of
// W); with C = 0 it holds nothing and the second pass reads memory again.
template <int W, int C> struct LaneRow {
    float v[C > 0 ? C : 1][W];
    __device__ __forceinline__ void keep(int k, const float (&in)[W]) {
        if constexpr (C > 0)
#pragma unroll
            for (int e = 0; e < W; ++e) v[k][e] = in[e];
    }
    __device__ __forceinline__ void restore(int k, float (&out)[W]) const {
#pragma unroll
        for (int e = 0; e < W; ++e) out[e] = v[k][e];
    }
};

// Rows move in chunks of W (8: 16-byte accesses); a row of at most 32 C W
// elements is read once and kept in registers (LaneRow).
template <int W, int C>
__global__ void rmsnorm_forward_kernel(bf16* y, float* rstd, const bf16* x, const bf16* w, int64_t R, int D,
                                       float eps) {
    const int lane = threadIdx.x & 31, n = D / W;
    const int64_t r = blockIdx.x * int64_t(kWarps) + (threadIdx.x >> 5);
    if (r >= R) return;
    const bf16* xr = x + r * D;
    LaneRow<W, C> xs;
    float ss = 0;
    lane_chunks<C>(lane, n, [&](int k, int j) {
        float v[W];
        cuda::load_chunk(v, xr + j * W);
#pragma unroll
        for (int e = 0; e < W; ++e) ss += v[e] * v[e];
        xs.keep(k, v);
    });
    ss = cuda::warp_sum(ss);
    const float s = rsqrtf(ss / float(D) + eps);
    if (lane == 0) rstd[r] = s;
    bf16* yr = y + r * D;
    lane_chunks<C>(lane, n, [&](int k, int j) {
        float v[W], wv[W];
        if constexpr (C > 0)
            xs.restore(k, v);
        else
            cuda::load_chunk(v, xr + j * W);
        cuda::load_chunk(wv, w + j * W);
#pragma unroll
        for (int e = 0; e < W; ++e) v[e] = v[e] * s * wv[e];
        cuda::store_chunk(yr + j * W, v);
    });
}

// The backward's rows a block takes (kRowsAWarp a warp, in turn), and so the
// rows of each partial sum of dw.
constexpr int kRowsAWarp = 4, kBlockRows = kWarps * kRowsAWarp;

// dx (+)= rstd * (w dy - xhat * mean(w dy xhat)), xhat = x * rstd. w dy and x
// are kept between the passes as the forward keeps x. With kDw (which needs
// a row in registers, C > 0), the block also sums its rows' dw terms
// dy x rstd while it has them: each warp over its rows in order, then the
// warps in order, into partial[block] for finish_column_sums (dw without a
// second read of dy and x). dx may be null (dw alone).
template <int W, int C, bool kDw>
__global__ void __launch_bounds__(kWarps * 32)
    rmsnorm_backward_kernel(bf16* dx, float* partial, const bf16* dy, const bf16* x, const bf16* w, const float* rstd,
                            int64_t R, int D, bool accumulate) {
    static_assert(!kDw || C > 0, "dw's partial sums are kept in registers");
    __shared__ float block_dw[kDw ? 32 * C * W : 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n = D / W;
    float dw[kDw ? C : 1][W] = {};
    const int64_t first = blockIdx.x * int64_t(kBlockRows), end = min(R, first + kBlockRows);
    for (int64_t r = first + warp; r < end; r += kWarps) {
        const bf16 *xr = x + r * D, *dyr = dy + r * D;
        const float s = rstd[r];
        // w dy and x of chunk j, loaded; dw's terms added.
        const auto load_row = [&](int k, int j, float(&wdy)[W], float(&xv)[W]) {
            float wv[W];
            cuda::load_chunk(wv, w + j * W);
            cuda::load_chunk(wdy, dyr + j * W);
            cuda::load_chunk(xv, xr + j * W);
#pragma unroll
            for (int e = 0; e < W; ++e) {
                if constexpr (kDw) dw[k][e] += wdy[e] * xv[e] * s;  // as column_sums: (dy x) rstd
                wdy[e] = wv[e] * wdy[e];
            }
        };
        LaneRow<W, C> wdys, xs;
        float dot = 0;
        lane_chunks<C>(lane, n, [&](int k, int j) {
            float wdy[W], xv[W];
            load_row(k, j, wdy, xv);
#pragma unroll
            for (int e = 0; e < W; ++e) dot += wdy[e] * xv[e];
            wdys.keep(k, wdy);
            xs.keep(k, xv);
        });
        if (!dx) continue;
        const float m = cuda::warp_sum(dot) * s / float(D);
        bf16* dxr = dx + r * D;
        lane_chunks<C>(lane, n, [&](int k, int j) {
            float wdy[W], xv[W], g[W];
            if constexpr (C > 0) {
                wdys.restore(k, wdy);
                xs.restore(k, xv);
            } else {
                load_row(0, j, wdy, xv);
            }
            if (accumulate) cuda::load_chunk(g, dxr + j * W);
#pragma unroll
            for (int e = 0; e < W; ++e) {
                const float d = s * (wdy[e] - xv[e] * s * m);
                g[e] = accumulate ? g[e] + d : d;
            }
            cuda::store_chunk(dxr + j * W, g);
        });
    }
    if constexpr (kDw) {
        for (int turn = 0; turn < kWarps; ++turn) {
            if (warp == turn)
                lane_chunks<C>(lane, n, [&](int k, int j) {
#pragma unroll
                    for (int e = 0; e < W; ++e) block_dw[j * W + e] = turn == 0 ? dw[k][e] : block_dw[j * W + e] + dw[k][e];
                });
            __syncthreads();
        }
        for (int c = threadIdx.x; c < D; c += blockDim.x) partial[blockIdx.x * int64_t(D) + c] = block_dw[c];
    }
}

// Calls launch(W, C): W = 8 when rows are chunkable; C = 1, 4 or 8 chunks a
// lane, the fewest that hold the row (registers grow with C: 8 is D <= 2048),
// else 0, two passes over memory (always so for W = 1).
template <class Launch> void with_row_layout(int D, std::initializer_list<const void*> ptrs, Launch&& launch) {
    using std::integral_constant;
    cuda::with_chunk_width(D, ptrs, [&](auto width) {
        constexpr int W = decltype(width)::value;
        const int per_lane = (D / W + 31) / 32;
        if constexpr (W == 1)
            launch(width, integral_constant<int, 0>());
        else if (per_lane <= 1)
            launch(width, integral_constant<int, 1>());
        else if (per_lane <= 4)
            launch(width, integral_constant<int, 4>());
        else if (per_lane <= 8)
            launch(width, integral_constant<int, 8>());
        else
            launch(width, integral_constant<int, 0>());
    });
}

int64_t rows_of(const char* op, const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& w) {
    const int64_t D = w.numel();
    check(D > 0 && x.numel() % D == 0 && y.numel() == x.numel() && rstd.numel() == x.numel() / D, op,
          "expected x [R,D], w [D], rstd [R] and an output like x; got x " + x.shape_str() + ", w " + w.shape_str() +
              ", rstd " + rstd.shape_str() + ", output " + y.shape_str());
    cuda::require_dtype(op, "x", x, DType::BF16);
    cuda::require_dtype(op, "w", w, DType::BF16);
    cuda::require_dtype(op, "rstd", rstd, DType::F32);
    return x.numel() / D;
}

}  // namespace

void CudaOps::rmsnorm_forward(Tensor y, Tensor rstd, Tensor x, Tensor w, double eps) {
    const char* op = "rmsnorm_forward";
    const int64_t R = rows_of(op, y, rstd, x, w);
    cuda::require_dtype(op, "y", y, DType::BF16);
    if (!R) return;
    const unsigned blocks = unsigned((R + kWarps - 1) / kWarps);
    with_row_layout(int(w.numel()), {y.data, x.data, w.data}, [&](auto W, auto C) {
        rmsnorm_forward_kernel<W, C><<<blocks, kWarps * 32, 0, stream()>>>(
            static_cast<bf16*>(y.data), static_cast<float*>(rstd.data), static_cast<const bf16*>(x.data),
            static_cast<const bf16*>(w.data), R, int(w.numel()), float(eps));
    });
    MOE_CUDA_LAUNCHED();
}

void CudaOps::rmsnorm_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd, Write dx_write,
                               Write dw_write) {
    const int64_t R = rows_of("rmsnorm_backward", dy, rstd, x, w);
    const int D = int(w.numel());
    check((dx.empty() || dx.numel() == x.numel()) && (dw.empty() || dw.numel() == D), "rmsnorm_backward",
          "gradients dx " + dx.shape_str() + ", dw " + dw.shape_str() + " for x " + x.shape_str() + ", w " +
              w.shape_str());
    cuda::require_dtype("rmsnorm_backward", "dy", dy, DType::BF16);
    cuda::require_dtype("rmsnorm_backward", "dx", dx, DType::BF16);
    cuda::require_dtype("rmsnorm_backward", "dw", dw, DType::F32);
    const bf16 *pdy = static_cast<const bf16*>(dy.data), *px = static_cast<const bf16*>(x.data);
    const float* pr = static_cast<const float*>(rstd.data);
    if (R == 0 || (dx.empty() && dw.empty())) {
        if (!dw.empty()) cuda::column_sums(*this, static_cast<float*>(dw.data), dw_write, pdy, px, pr, R, D);
        return;
    }
    const int64_t blocks = (R + kBlockRows - 1) / kBlockRows;
    with_row_layout(D, {dx.data, pdy, px, w.data}, [&](auto W, auto C) {
        // dw in the same pass where a lane keeps its row in up to 4 chunks
        // (ptxas, H 1024: 127 registers; 8 chunks already take 183 without
        // dw's 64 sums), else column_sums after.
        constexpr bool kDw = decltype(C)::value > 0 && decltype(C)::value <= 4;
        float* partial = kDw && !dw.empty() ? static_cast<float*>(scratch(size_t(blocks * D) * sizeof(float))) : nullptr;
        const auto launch = [&](auto dw_here) {
            rmsnorm_backward_kernel<W, C, decltype(dw_here)::value><<<unsigned(blocks), kWarps * 32, 0, stream_>>>(
                static_cast<bf16*>(dx.data), partial, pdy, px, static_cast<const bf16*>(w.data), pr, R, D,
                dx_write == Write::add);
            MOE_CUDA_LAUNCHED();
        };
        if (partial) {
            launch(std::bool_constant<kDw>());
            cuda::finish_column_sums(*this, static_cast<float*>(dw.data), dw_write, partial, blocks, D);
            return;
        }
        if (!dx.empty()) launch(std::false_type());
        if (!dw.empty()) cuda::column_sums(*this, static_cast<float*>(dw.data), dw_write, pdy, px, pr, R, D);
    });
}

}  // namespace moe
