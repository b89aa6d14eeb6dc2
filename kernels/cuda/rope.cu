// Rotary position embedding on the GPU, rotate-half convention, in place on
// bf16 x[B,T,heads,hd]: the pair (i, i + hd/2) at position p turns by
// p * theta^(-2i/hd), row t at position first_position + t; the backward
// turns by the opposite angle.
//
// One thread per (token, i) computes its angle once and turns the pair in
// every head of the token. The angle and its cos/sin are computed in double,
// as the CPU reference does, then rounded to fp32: position * frequency
// reaches thousands of radians, where an fp32 angle would already be off by
// ~1e-4.
#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;

// sign +1 rotates (forward), -1 rotates back (backward).
__global__ void rope_kernel(bf16* x, int64_t pairs, int64_t T, int64_t heads, int hd, double theta,
                            int64_t first_position, float sign) {
    const int half = hd / 2;
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < pairs; n += int64_t(gridDim.x) * blockDim.x) {
        const int64_t token = n / half;
        const int i = int(n % half);
        const double angle = double(first_position + token % T) * pow(theta, -2.0 * double(i) / double(hd));
        double s, c;
        sincos(angle, &s, &c);
        const float cs = float(c), sn = sign * float(s);
        bf16* a = x + token * heads * hd + i;  // a[h * hd] and its partner a[h * hd + half]
        for (int64_t h = 0; h < heads; ++h) {
            const float ai = cuda::load(a, h * hd), ci = cuda::load(a, h * hd + half);
            cuda::store(a, h * hd, ai * cs - ci * sn);
            cuda::store(a, h * hd + half, ai * sn + ci * cs);
        }
    }
}

void rotate(CudaOps& ops, const char* op, Tensor x, double theta, int64_t first_position, float sign) {
    check(x.ndim == 4 && x.dim(3) % 2 == 0, op, "x must be [B,T,heads,hd] with hd even, got " + x.shape_str());
    cuda::require_dtype(op, "x", x, DType::BF16);
    const int64_t T = x.dim(1), heads = x.dim(2), hd = x.dim(3);
    const int64_t pairs = x.dim(0) * T * (hd / 2);
    if (pairs == 0 || heads == 0) return;
    constexpr int kThreads = 256;
    rope_kernel<<<cuda::blocks_for(pairs, kThreads), kThreads, 0, ops.stream()>>>(
        static_cast<bf16*>(x.data), pairs, T, heads, int(hd), theta, first_position, sign);
    MOE_CUDA_LAUNCHED();
}

}  // namespace

void CudaOps::rope_forward(Tensor x, double theta, int64_t first_position) {
    rotate(*this, "rope_forward", x, theta, first_position, 1.f);
}

void CudaOps::rope_backward(Tensor dx, double theta) { rotate(*this, "rope_backward", dx, theta, 0, -1.f); }

}  // namespace moe
