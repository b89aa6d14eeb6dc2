// Rotary position embedding on the GPU, rotate-half convention, in place on
// bf16 x[B,T,heads,hd] or some heads of each position's row (Heads): the
// pair (i, i + hd/2) at position p turns by p * theta^(-2i/hd), row t at
// position first_position + t; the backward turns by the opposite angle.
//
// The angles' cos and sin come from a table CudaOps keeps (rope_table): made
// on the host in double exactly as the CPU reference computes them, then
// rounded to fp32 (position * frequency reaches thousands of radians, where
// an fp32 angle would already be off by ~1e-4). One thread per token and
// chunk of W pairs (W = 8: 16-byte accesses to each half of a head) turns
// them in every head of the view at the token.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;

// W consecutive (cos, sin) pairs of CudaOps::rope_table (W = 8: four 16-byte
// loads).
template <int W> __device__ __forceinline__ void load_angles(float (&cs)[W], float (&sn)[W], const float* table) {
    if constexpr (W == 8) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float4 f = reinterpret_cast<const float4*>(table)[q];
            cs[2 * q] = f.x;
            sn[2 * q] = f.y;
            cs[2 * q + 1] = f.z;
            sn[2 * q + 1] = f.w;
        }
    } else {
#pragma unroll
        for (int e = 0; e < W; ++e) {
            cs[e] = table[2 * e];
            sn[e] = table[2 * e + 1];
        }
    }
}

// Turns W pairs (a[e], c[e]) = (x_i, x_{i + hd/2}) by their angles, in place.
template <int W>
__device__ __forceinline__ void turn(float (&a)[W], float (&c)[W], const float (&cs)[W], const float (&sn)[W]) {
#pragma unroll
    for (int e = 0; e < W; ++e) {
        const float ai = a[e], ci = c[e];
        a[e] = ai * cs[e] - ci * sn[e];
        c[e] = ai * sn[e] + ci * cs[e];
    }
}

// x: the view's first head of the first token; a token's row holds `row`
// heads, of which the view's `heads` turn. table: (cos, sin) at
// [2 (p * hd/2 + i)]; sign +1 rotates (forward), -1 rotates back (backward).
template <int W>
__global__ void rope_kernel(bf16* x, const float* table, int64_t chunks, int64_t T, int64_t row, int64_t heads,
                            int hd, int64_t first_position, float sign) {
    const int half = hd / 2, per_token = half / W;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < chunks;
         n += int64_t(gridDim.x) * blockDim.x) {
        const int64_t token = n / per_token;
        const int i = int(n % per_token) * W;
        float cs[W], sn[W];
        load_angles(cs, sn, table + 2 * ((first_position + token % T) * half + i));
#pragma unroll
        for (int e = 0; e < W; ++e) sn[e] *= sign;
        bf16* a = x + token * row * hd + i;  // a + h * hd and its partner a + h * hd + half
        for (int64_t h = 0; h < heads; ++h) {
            float ai[W], ci[W];
            cuda::load_chunk(ai, a + h * hd);
            cuda::load_chunk(ci, a + h * hd + half);
            turn(ai, ci, cs, sn);
            cuda::store_chunk(a + h * hd, ai);
            cuda::store_chunk(a + h * hd + half, ci);
        }
    }
}

void rotate(CudaOps& ops, const char* op, Heads x, double theta, int64_t first_position, float sign) {
    check(x.t.ndim == 4 && x.hd() % 2 == 0, op, "x must be [B,T,heads,hd] with hd even, got " + x.str());
    check(first_position >= 0, op, "first_position must be >= 0, got " + std::to_string(first_position));
    cuda::require_dtype(op, "x", x.t, DType::BF16);
    const int64_t T = x.t.dim(1), hd = x.hd();
    if (x.t.numel() == 0 || x.count == 0) return;
    const float* table = ops.rope_table(first_position + T, hd, theta);
    constexpr int kThreads = 256;
    // Chunks of 8 pairs need hd/2 a multiple of 8 and x on 16 bytes.
    cuda::with_chunk_width(hd / 2, {x.base()}, [&](auto width) {
        constexpr int W = decltype(width)::value;
        const int64_t chunks = x.t.dim(0) * T * (hd / 2 / W);
        rope_kernel<W><<<cuda::blocks_for(chunks, kThreads), kThreads, 0, ops.stream()>>>(
            static_cast<bf16*>(x.base()), table, chunks, T, x.row(), x.count, int(hd), first_position, sign);
    });
    MOE_CUDA_LAUNCHED();
}

}  // namespace

const float* CudaOps::rope_table(int64_t positions, int64_t hd, double theta) {
    if (rope_table_ && positions <= rope_positions_ && hd == rope_hd_ && theta == rope_theta_) return rope_table_;
    // Room to grow: a decoder asks for one more position each token.
    const int64_t P = std::max(positions, hd == rope_hd_ && theta == rope_theta_ ? 2 * rope_positions_ : 0);
    const int64_t half = hd / 2;
    // The angle as kernels/cpu/rope.cpp computes it, bit for bit.
    std::vector<double> frequency(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) frequency[size_t(i)] = std::pow(theta, -2.0 * double(i) / double(hd));
    std::vector<float> host(size_t(2 * P * half));
    for (int64_t p = 0; p < P; ++p)
        for (int64_t i = 0; i < half; ++i) {
            const double angle = double(p) * frequency[size_t(i)];
            host[size_t(2 * (p * half + i))] = float(std::cos(angle));
            host[size_t(2 * (p * half + i) + 1)] = float(std::sin(angle));
        }
    release(rope_table_);  // waits for queued kernels that read it
    rope_table_ = nullptr;  // until the new one is there (alloc may throw)
    rope_table_ = static_cast<float*>(alloc(host.size() * sizeof(float)));
    // Synchronous: alloc has drained the stream and the table is rarely made.
    MOE_CUDA_CHECK(cudaMemcpy(rope_table_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    rope_positions_ = P;
    rope_hd_ = hd;
    rope_theta_ = theta;
    return rope_table_;
}

void CudaOps::rope_forward(Heads x, double theta, int64_t first_position) {
    rotate(*this, "rope_forward", x, theta, first_position, 1.f);
}

void CudaOps::rope_backward(Tensor dx, double theta) { rotate(*this, "rope_backward", dx, theta, 0, -1.f); }

}  // namespace moe
