// AdamW on fp32 master weights, in PyTorch's order (kernels/cpu/adamw.cpp):
// decoupled decay, then the bias-corrected Adam update with the gradient
// scaled first (clipping); the bf16 working copy is rewritten in the same
// pass, so the forward never reads a stale weight.
//
// One launch updates every tensor of a step: a table of the tensors (their
// pointers, sizes and first blocks) goes up through the upload ring into
// scratch, each block updates a fixed chunk of one tensor and finds which by
// a binary search over the first blocks. A step's hundreds of small tensors
// (norms, biases) then cost no launch of their own.
#include <cmath>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

constexpr int kThreads = 256, kWidth = 4;  // 4 floats: one 16-byte access
constexpr int64_t kChunk = 8192;           // elements a block updates: 8 accesses of kWidth a thread
static_assert(kChunk % (kThreads * kWidth) == 0, "chunks start aligned and every thread does as many accesses");

// A tensor of the step as the kernel reads it from the table.
struct Slice {
    float *param, *m, *v;
    const float* grad;
    cuda::bf16* work;     // null: no separate working copy
    int64_t n;            // elements
    int64_t n_vec;        // the first n_vec move kWidth at a time (0 when a pointer is not aligned for it)
    int64_t first_block;  // of the grid, this tensor's first chunk
    float decay;          // 1 - lr * weight_decay
};

struct Consts {
    float beta1, beta2, eps, step_size, sqrt_c2, grad_scale;
};

// The per-element update, the same fp32 operations in the same order for
// every access width.
__device__ __forceinline__ void update(float& param, float grad, float& m, float& v, float decay, const Consts& c) {
    const float g = grad * c.grad_scale;
    m = c.beta1 * m + (1.0f - c.beta1) * g;
    v = c.beta2 * v + (1.0f - c.beta2) * g * g;
    param = param * decay - c.step_size * m / (sqrtf(v) / c.sqrt_c2 + c.eps);
}

// The tensors' pointers come from memory, not kernel arguments, so the
// compiler cannot tell they are global: __ldca/__stwb (the default caching)
// make the accesses LDG/STG rather than generic LD/ST.
template <class V> __device__ __forceinline__ V get(const float* p) { return __ldca(reinterpret_cast<const V*>(p)); }
template <class V> __device__ __forceinline__ void put(float* p, V x) { __stwb(reinterpret_cast<V*>(p), x); }

__global__ void __launch_bounds__(kThreads) adamw_kernel(const Slice* __restrict__ slices, int count, Consts c) {
    const Slice s = slices[cuda::slice_of_block(slices, count)];
    const int64_t begin = (blockIdx.x - s.first_block) * kChunk, end = min(begin + kChunk, s.n);
    const int64_t vec_end = min(end, s.n_vec);
    for (int64_t i = begin + kWidth * threadIdx.x; i < vec_end; i += kWidth * kThreads) {
        float4 p = get<float4>(s.param + i), m = get<float4>(s.m + i), v = get<float4>(s.v + i);
        const float4 g = get<float4>(s.grad + i);
        update(p.x, g.x, m.x, v.x, s.decay, c);
        update(p.y, g.y, m.y, v.y, s.decay, c);
        update(p.z, g.z, m.z, v.z, s.decay, c);
        update(p.w, g.w, m.w, v.w, s.decay, c);
        put(s.param + i, p);
        put(s.m + i, m);
        put(s.v + i, v);
        if (s.work) {
            uint2 w;
            reinterpret_cast<__nv_bfloat162*>(&w)[0] = __floats2bfloat162_rn(p.x, p.y);
            reinterpret_cast<__nv_bfloat162*>(&w)[1] = __floats2bfloat162_rn(p.z, p.w);
            __stwb(reinterpret_cast<uint2*>(s.work + i), w);
        }
    }
    for (int64_t i = max(begin, vec_end) + threadIdx.x; i < end; i += kThreads) {  // the tail, or all when unaligned
        float p = get<float>(s.param + i), m = get<float>(s.m + i), v = get<float>(s.v + i);
        update(p, get<float>(s.grad + i), m, v, s.decay, c);
        put(s.param + i, p);
        put(s.m + i, m);
        put(s.v + i, v);
        if (s.work) __stwb(s.work + i, __float2bfloat16_rn(p));
    }
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The table entry of a tensor; the caller sets first_block.
Slice slice_of(const AdamWTensor& t, double lr) {
    check_same_shape("adamw_step", t.param, t.grad);
    check_same_shape("adamw_step", t.param, t.m);
    check_same_shape("adamw_step", t.param, t.v);
    cuda::require_dtype("adamw_step", "param", t.param, DType::F32);
    const bool separate = !t.work.empty() && t.work.data != t.param.data;
    if (separate) {
        check(t.work.numel() == t.param.numel(), "adamw_step",
              "work " + t.work.shape_str() + " is not like " + t.param.shape_str());
        cuda::require_dtype("adamw_step", "work", t.work, DType::BF16);
    }
    Slice s{static_cast<float*>(t.param.data), static_cast<float*>(t.m.data), static_cast<float*>(t.v.data),
            static_cast<const float*>(t.grad.data), separate ? static_cast<cuda::bf16*>(t.work.data) : nullptr,
            t.param.numel(), 0, 0, float(1 - lr * t.weight_decay)};
    bool vec = aligned(s.param, 16) && aligned(s.m, 16) && aligned(s.v, 16) && aligned(s.grad, 16);
    if (s.work) vec = vec && aligned(s.work, kWidth * sizeof(cuda::bf16));
    if (vec) s.n_vec = s.n - s.n % kWidth;
    return s;
}

}  // namespace

void CudaOps::adamw_step(const std::vector<AdamWTensor>& tensors, const AdamWParams& a) {
    check(a.step >= 1, "adamw_step", "step is 1-based, got " + std::to_string(a.step));
    std::vector<Slice> table;
    table.reserve(tensors.size());
    int64_t blocks = 0;
    for (const AdamWTensor& t : tensors) {
        Slice s = slice_of(t, a.lr);
        if (!s.n) continue;
        s.first_block = blocks;
        blocks += (s.n + kChunk - 1) / kChunk;
        table.push_back(s);
    }
    if (table.empty()) return;
    // Stream order keeps the table until the kernel has read it: the next
    // call's upload into the same scratch is queued after this launch.
    const size_t bytes = table.size() * sizeof(Slice);
    auto* device_table = static_cast<Slice*>(scratch(bytes));
    uploads_.copy(device_table, table.data(), bytes, stream_);
    const double c1 = 1 - std::pow(a.beta1, double(a.step)), c2 = 1 - std::pow(a.beta2, double(a.step));
    const Consts c{float(a.beta1), float(a.beta2), float(a.eps), float(a.lr / c1), float(std::sqrt(c2)),
                   float(a.grad_scale)};
    adamw_kernel<<<unsigned(blocks), kThreads, 0, stream_>>>(device_table, int(table.size()), c);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
