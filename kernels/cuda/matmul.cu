// Linear layers through cuBLASLt: bf16 inputs, fp32 compute, bf16 or fp32
// output; the bias rides the forward GEMM's epilogue. The linear of a
// concatenation [a | b] runs each input against its block of the weight's
// columns (a leading dimension past the block). Grouped (per-expert)
// GEMMs are one GEMM per expert over its rows, the experts dealt round-robin
// to side streams: one expert's GEMM leaves the last wave of tiles part
// empty (medium's weight gradients fill 0.67 of one), and other experts'
// tiles fill it. The experts touch disjoint rows and weights, and a GEMM's
// bits do not depend on its stream. cuBLASLt is column-major: a
// row-major [R,C] matrix is its column-major transpose [C,R] with ld C, so
//   y[N,O] = x[N,I] w[O,I]^T      is  y^T (O x N) = w^T(T) . x^T,
//   dx[N,I] (+)= dy[N,O] w[O,I]   is  dx^T (I x N) = w^T . dy^T,
//   dw[O,I] (+)= dy^T x           is  dw^T (I x O) = x^T . dy^T(T).
// Descriptors, layouts and the chosen algorithm are cached per shape;
// gemm_candidates times the heuristic's next-ranked algorithms beside it.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <tuple>

#include "kernels/concat_linear_dims.h"
#include "kernels/cuda/column_sums.h"
#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

void check_lt(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw std::runtime_error(std::string("cuBLASLt: ") + what + " failed with status " + std::to_string(int(s)));
}

cudaDataType_t cuda_type(DType t) {
    switch (t) {
        case DType::BF16: return CUDA_R_16BF;
        case DType::F32: return CUDA_R_32F;
        default: throw std::invalid_argument(std::string("matmul: the CUDA backend has no GEMM on ") + dtype_name(t));
    }
}

// Largest power of two (<= 256) dividing the address: cuBLASLt picks
// algorithms for an alignment it is told.
int alignment_of(const void* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    int align = 256;
    while (align > 1 && a % align) align >>= 1;
    return align;
}

// A grouped GEMM's per-expert row count changes every step; asking cuBLASLt's
// heuristic for each new count costs host time on every layer and grows the
// cache without bound. That dimension is planned by size class instead (the
// class's algorithm runs every size up to it; quarter-octave classes keep the
// heuristic's problem within 25% of the real one), and the real sizes are set
// on the layouts at each call. Should cuBLASLt refuse a class's algorithm for
// a real size, that exact size gets its own plan.
int64_t size_class(int64_t n) {
    if (n <= 256) {
        int64_t c = 1;
        while (c < n) c <<= 1;
        return c;
    }
    int64_t octave = 256;
    while (octave * 2 <= n) octave <<= 1;
    const int64_t step = octave / 4;
    return (n + step - 1) / step * step;
}

void set_layout_dims(cublasLtMatrixLayout_t layout, uint64_t rows, uint64_t cols) {
    check_lt(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, sizeof(rows)), "layout rows");
    check_lt(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof(cols)), "layout cols");
}

}  // namespace

struct MatmulPlans {
    struct Plan {
        cublasLtMatmulDesc_t desc = nullptr;
        cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
        cublasLtMatmulAlgo_t algo{};
        uint64_t runs = 0;  // calls it ran
        ~Plan() {
            if (a) cublasLtMatrixLayoutDestroy(a);
            if (b) cublasLtMatrixLayoutDestroy(b);
            if (c) cublasLtMatrixLayoutDestroy(c);
            if (desc) cublasLtMatmulDescDestroy(desc);
        }
        // The layouts' sizes for out (m x n) = op(a) (m x k) op(b) (k x n).
        void set_dims(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k) const {
            set_layout_dims(a, trans_a ? k : m, trans_a ? m : k);
            set_layout_dims(b, trans_b ? n : k, trans_b ? k : n);
            set_layout_dims(c, m, n);
        }
    };
    // A problem as planned: n and k are the planned sizes (an expert's size
    // class); al_ the alignments of a, b, out (and c) and bias.
    struct Key {
        bool trans_a, trans_b;
        int64_t m, n, k, lda, ldb, ldc;
        DType a_type, b_type, out_type;
        bool bias;
        int al_a, al_b, al_c, al_bias;
        bool accumulate;
        auto tie() const {
            return std::tie(trans_a, trans_b, m, n, k, lda, ldb, ldc, a_type, b_type, out_type, bias, al_a, al_b, al_c,
                            al_bias, accumulate);
        }
        bool operator<(const Key& o) const { return tie() < o.tie(); }
    };
    std::map<Key, std::unique_ptr<Plan>> plans;
};

void destroy_matmul_plans(MatmulPlans* plans) { delete plans; }

size_t CudaOps::matmul_plan_count() const { return matmul_plans_ ? matmul_plans_->plans.size() : 0; }

namespace {

// A plan's descriptor and layouts for its key's problem (no algorithm yet).
std::unique_ptr<MatmulPlans::Plan> make_plan(const MatmulPlans::Key& key) {
    auto plan = std::make_unique<MatmulPlans::Plan>();
    check_lt(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
    const cublasOperation_t ta = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    check_lt(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "transa");
    check_lt(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "transb");
    if (key.bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        check_lt(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)),
                 "bias epilogue");
        const cudaDataType_t bias_type = cuda_type(key.out_type);
        check_lt(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                sizeof(bias_type)),
                 "bias type");
    }
    // Stored shapes: op(a) is m x k, so a is k x m when transposed.
    const int64_t m = key.m, n = key.n, k = key.k;
    check_lt(cublasLtMatrixLayoutCreate(&plan->a, cuda_type(key.a_type), key.trans_a ? k : m, key.trans_a ? m : k,
                                        key.lda),
             "layout a");
    check_lt(cublasLtMatrixLayoutCreate(&plan->b, cuda_type(key.b_type), key.trans_b ? n : k, key.trans_b ? k : n,
                                        key.ldb),
             "layout b");
    check_lt(cublasLtMatrixLayoutCreate(&plan->c, cuda_type(key.out_type), m, n, key.ldc), "layout out");
    return plan;
}

// cuBLASLt heuristic's first `count` algorithms for a plan's problem (its
// layouts as they are set), for its key's alignments and kLtWorkspaceBytes
// of workspace: none where it has none.
std::vector<cublasLtMatmulHeuristicResult_t> heuristic(cublasLtHandle_t lt, const MatmulPlans::Plan& plan,
                                                       const MatmulPlans::Key& key, int count) {
    cublasLtMatmulPreference_t pref = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const size_t ws = CudaOps::kLtWorkspaceBytes;
    const uint32_t ua = key.al_a, ub = key.al_b, uc = key.al_c;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ua, sizeof(ua));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ub, sizeof(ub));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &uc, sizeof(uc));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &uc, sizeof(uc));
    std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(count));
    int found = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, count,
                                                            results.data(), &found);
    cublasLtMatmulPreferenceDestroy(pref);
    results.resize(s == CUBLAS_STATUS_SUCCESS ? size_t(found) : 0);
    return results;
}

}  // namespace

void CudaOps::gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, DType a_type,
                   int64_t lda, const void* b, DType b_type, int64_t ldb, void* out, DType out_type, int64_t ldc,
                   float beta, const void* bias, GemmVaries varies, int lane, const void* c) {
    if (m == 0 || n == 0) return;
    cudaStream_t stream = lane == kMainLane ? stream_ : lanes_[lane];
    if (!c) c = out;
    if (k == 0) {  // an empty sum: out = beta c (beta 0 or 1)
        const size_t size = dtype_size(out_type);
        if (beta == 0)
            MOE_CUDA_CHECK(cudaMemset2DAsync(out, ldc * size, 0, m * size, n, stream));
        else if (c != out)
            MOE_CUDA_CHECK(cudaMemcpy2DAsync(out, ldc * size, c, ldc * size, m * size, n, cudaMemcpyDeviceToDevice,
                                             stream));
        return;
    }
    if (!matmul_plans_) matmul_plans_ = new MatmulPlans;
    const int al_a = alignment_of(a), al_b = alignment_of(b), al_c = std::min(alignment_of(out), alignment_of(c));
    // The plan for problem size m x pn x pk (created on first use).
    const auto plan_for = [&](int64_t pn, int64_t pk) -> MatmulPlans::Plan& {
        const MatmulPlans::Key key{trans_a, trans_b, m, pn, pk, lda, ldb, ldc, a_type, b_type, out_type,
                                   bias != nullptr, al_a, al_b, al_c, bias ? alignment_of(bias) : 0, beta != 0};
        std::unique_ptr<MatmulPlans::Plan>& slot = matmul_plans_->plans[key];
        if (slot) return *slot;
        std::unique_ptr<MatmulPlans::Plan> plan = make_plan(key);
        const std::vector<cublasLtMatmulHeuristicResult_t> first = heuristic(lt_, *plan, key, 1);
        if (first.empty() || first[0].state != CUBLAS_STATUS_SUCCESS)
            throw std::runtime_error("cuBLASLt has no algorithm for a " + std::to_string(m) + " x " +
                                     std::to_string(pn) + " x " + std::to_string(pk) + " GEMM (" + dtype_name(a_type) +
                                     " -> " + dtype_name(out_type) + ", alignment " + std::to_string(al_a) + "/" +
                                     std::to_string(al_b) + "/" + std::to_string(al_c) + " bytes)");
        plan->algo = first[0].algo;
        slot = std::move(plan);
        return *slot;
    };
    const float alpha = 1.0f;
    void* workspace = lane == kMainLane ? lt_workspace_ : lane_workspaces_[lane];
    const auto run = [&](MatmulPlans::Plan& plan) {
        // Always: a dense GEMM's shape may be some expert size class's too.
        plan.set_dims(trans_a, trans_b, m, n, k);
        if (bias)
            check_lt(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
                     "bias pointer");
        const cublasStatus_t s = cublasLtMatmul(lt_, plan.desc, &alpha, a, plan.a, b, plan.b, &beta, c, plan.c, out,
                                                plan.c, &plan.algo, workspace, kLtWorkspaceBytes, stream);
        if (s == CUBLAS_STATUS_SUCCESS) ++plan.runs;
        return s;
    };
    const int64_t pn = varies == GemmVaries::n ? size_class(n) : n, pk = varies == GemmVaries::k ? size_class(k) : k;
    cublasStatus_t s = run(plan_for(pn, pk));
    if ((s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE) && (pn != n || pk != k))
        s = run(plan_for(n, k));
    check_lt(s, "matmul");
}

namespace {

// Device bytes for a timing (released at scope end), every byte 0x3c: bf16
// and fp32 values near 0.0115, neither zeros (which spare the tensor cores'
// power, and so raise their clock) nor NaN.
struct TimingBuffer {
    CudaOps& ops;
    void* data;
    TimingBuffer(CudaOps& o, size_t bytes) : ops(o), data(o.alloc(bytes)) {
        MOE_CUDA_CHECK(cudaMemsetAsync(data, 0x3c, bytes, o.stream()));
    }
    ~TimingBuffer() { ops.release(data); }
    TimingBuffer(const TimingBuffer&) = delete;
    TimingBuffer& operator=(const TimingBuffer&) = delete;
};

std::string describe(const MatmulPlans::Key& key) {
    return std::to_string(key.m) + " x " + std::to_string(key.n) + " x " + std::to_string(key.k) + " " +
           (key.trans_a ? "T" : "N") + (key.trans_b ? "T" : "N") + " " + dtype_name(key.a_type) + " -> " +
           dtype_name(key.out_type) + (key.bias ? " +bias" : "") + (key.accumulate ? " +C" : "");
}

}  // namespace

std::vector<CudaOps::GemmCandidates> CudaOps::gemm_candidates(int count, double seconds) {
    std::vector<GemmCandidates> out;
    if (!matmul_plans_) return out;
    synchronize();
    const float alpha = 1.0f, one = 1.0f, zero = 0.0f;
    // A call's time for each candidate of a plan: the plan's own algorithm
    // first, then the heuristic's others.
    const auto time_candidates = [&](const MatmulPlans::Key& key, MatmulPlans::Plan& plan) {
        std::vector<double> times;
        // The operands as the key stores them (column-major, leading
        // dimensions as planned), at the planned size.
        const int64_t a_cols = key.trans_a ? key.m : key.k, b_cols = key.trans_b ? key.k : key.n;
        TimingBuffer a(*this, size_t(key.lda * a_cols) * dtype_size(key.a_type));
        TimingBuffer b(*this, size_t(key.ldb * b_cols) * dtype_size(key.b_type));
        TimingBuffer c(*this, size_t(key.ldc * key.n) * dtype_size(key.out_type));
        plan.set_dims(key.trans_a, key.trans_b, key.m, key.n, key.k);
        std::unique_ptr<TimingBuffer> bias;
        if (key.bias) {
            bias = std::make_unique<TimingBuffer>(*this, size_t(key.m) * dtype_size(key.out_type));
            check_lt(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias->data,
                                                    sizeof(bias->data)),
                     "bias pointer");
        }
        const float* beta = key.accumulate ? &one : &zero;
        std::vector<cublasLtMatmulAlgo_t> algos = {plan.algo};
        for (const cublasLtMatmulHeuristicResult_t& r : heuristic(lt_, plan, key, count))
            if (int(algos.size()) < count && r.state == CUBLAS_STATUS_SUCCESS &&
                std::memcmp(&r.algo, &plan.algo, sizeof r.algo) != 0)
                algos.push_back(r.algo);
        for (const cublasLtMatmulAlgo_t& algo : algos) {
            const auto call = [&] {
                return cublasLtMatmul(lt_, plan.desc, &alpha, a.data, plan.a, b.data, plan.b, beta, c.data, plan.c,
                                      c.data, plan.c, &algo, lt_workspace_, kLtWorkspaceBytes, stream_);
            };
            const cublasStatus_t first = call();
            if (&algo == &algos[0]) check_lt(first, "a plan's own algorithm at its planned size");
            if (first != CUBLAS_STATUS_SUCCESS) continue;  // another refused at run time: no candidate
            synchronize();
            auto t0 = std::chrono::steady_clock::now();
            check_lt(call(), "a candidate");
            synchronize();
            const double once = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            const int reps = int(std::clamp(seconds / std::max(once, 1e-7), 1.0, 100.0));
            t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < reps; ++i) check_lt(call(), "a candidate");
            synchronize();
            times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
        }
        return times;
    };
    for (auto& [key, plan] : matmul_plans_->plans) {
        GemmCandidates g{describe(key), 2.0 * double(key.m) * double(key.n) * double(key.k), plan->runs, {}};
        try {
            g.seconds = time_candidates(key, *plan);
        } catch (const OutOfDeviceMemory&) {  // no room for its operands beside the model's: not timed
        }
        out.push_back(std::move(g));
    }
    return out;
}

void CudaOps::fork_lanes(int lanes) {
    MOE_CUDA_CHECK(cudaEventRecord(fork_, stream_));
    for (int i = 0; i < lanes; ++i) MOE_CUDA_CHECK(cudaStreamWaitEvent(lanes_[i], fork_, 0));
}

void CudaOps::join_lanes(int lanes) {
    for (int i = 0; i < lanes; ++i) {
        MOE_CUDA_CHECK(cudaEventRecord(joined_[i], lanes_[i]));
        MOE_CUDA_CHECK(cudaStreamWaitEvent(stream_, joined_[i], 0));
    }
}

namespace {

struct Linear {
    int64_t N, I, O;
};

Linear check_linear(const char* op, const Tensor& y, const Tensor& x, const Tensor& w) {
    const int64_t O = w.dim(0), I = w.dim(1);
    check(w.ndim == 2 && x.row_size() == I && y.row_size() == O && y.dim(0) == x.dim(0), op,
          "expected x [N,I], w [O,I], y [N,O]; got x " + x.shape_str() + ", w " + w.shape_str() + ", y " +
              y.shape_str());
    cuda::require_dtype(op, "x", x, DType::BF16);
    cuda::require_dtype(op, "w", w, DType::BF16);
    return {x.dim(0), I, O};
}

// concat_linear_dims, all BF16.
ConcatLinear check_concat_linear(const char* op, const Tensor& y, const Tensor& a, const Tensor& b, const Tensor& w) {
    for (const Tensor* t : {&y, &a, &b, &w}) cuda::require_dtype(op, "y, a, b and w", *t, DType::BF16);
    return concat_linear_dims(op, y, a, b, w);
}

// y = round(acc + bias) over [n / O, O] (bias may be null).
__global__ void add_bias_round_kernel(cuda::bf16* y, const float* acc, const cuda::bf16* bias, int64_t n, int64_t O) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = __float2bfloat16_rn(acc[i] + (bias ? __bfloat162float(bias[i % O]) : 0.0f));
}

// Side streams for E experts' GEMMs, of `streams`: none for one expert (a
// shared expert), which stays on the main stream.
int expert_lanes(int64_t E, int streams) { return E > 1 ? int(std::min<int64_t>(E, streams)) : 0; }
int lane_of(int64_t e, int lanes) { return lanes ? int(e % lanes) : CudaOps::kMainLane; }

// The GEMM's beta for an output written as `write` says.
float beta_for(Write write) { return write == Write::overwrite ? 0.0f : 1.0f; }

// Rows offsets[e]..offsets[e+1] of a grouped GEMM, checked against R and E.
void check_offsets(const char* op, const std::vector<int64_t>& offsets, int64_t E, int64_t R) {
    check(int64_t(offsets.size()) == E + 1 && offsets.front() == 0 && offsets.back() == R, op,
          "offsets must hold E+1 = " + std::to_string(E + 1) + " entries from 0 to the " + std::to_string(R) +
              " rows");
    for (int64_t e = 0; e < E; ++e) check(offsets[e] <= offsets[e + 1], op, "offsets must not decrease");
}

}  // namespace

void CudaOps::matmul_forward(Tensor y, Tensor x, Tensor w, Tensor b) {
    const Linear s = check_linear("matmul_forward", y, x, w);
    check(b.empty() || (b.numel() == s.O && b.dtype == y.dtype), "matmul_forward",
          "bias " + b.shape_str() + " must be [O] in the output's dtype");
    check(y.dtype == DType::BF16 || (y.dtype == DType::F32 && b.empty()), "matmul_forward",
          "y must be BF16, or F32 without a bias");
    gemm(true, false, s.O, s.N, s.I, w.data, w.dtype, s.I, x.data, x.dtype, s.I, y.data, y.dtype, s.O, 0.0f,
         b.empty() ? nullptr : b.data);
}

// cuBLASLt's C is the residual and D the output: the sum is rounded once.
void CudaOps::matmul_residual_forward(Tensor y, Tensor x, Tensor w, Tensor residual) {
    const Linear s = check_linear("matmul_residual_forward", y, x, w);
    check_same_shape("matmul_residual_forward", y, residual);
    cuda::require_dtype("matmul_residual_forward", "y", y, DType::BF16);
    gemm(true, false, s.O, s.N, s.I, w.data, w.dtype, s.I, x.data, x.dtype, s.I, y.data, y.dtype, s.O, 1.0f, nullptr,
         GemmVaries::nothing, kMainLane, residual.data);
}

void CudaOps::matmul_backward(Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w, Write dx_write,
                              Write dw_write) {
    const Linear s = check_linear("matmul_backward", dy, x, w);
    cuda::require_dtype("matmul_backward", "dy", dy, DType::BF16);
    cuda::require_dtype("matmul_backward", "dx", dx, DType::BF16);
    cuda::require_dtype("matmul_backward", "dw", dw, DType::F32);
    cuda::require_dtype("matmul_backward", "db", db, DType::F32);
    check((dx.empty() || dx.numel() == x.numel()) && (dw.empty() || dw.numel() == w.numel()) &&
              (db.empty() || db.numel() == s.O),
          "matmul_backward", "gradient shapes dx " + dx.shape_str() + ", dw " + dw.shape_str() + ", db " +
                                 db.shape_str() + " do not match x " + x.shape_str() + ", w " + w.shape_str());
    if (!dx.empty())
        gemm(false, false, s.I, s.N, s.O, w.data, w.dtype, s.I, dy.data, dy.dtype, s.O, dx.data, dx.dtype, s.I,
             beta_for(dx_write), nullptr);
    if (!dw.empty())
        gemm(false, true, s.I, s.O, s.N, x.data, x.dtype, s.I, dy.data, dy.dtype, s.O, dw.data, dw.dtype, s.I,
             beta_for(dw_write), nullptr);
    if (!db.empty())
        cuda::column_sums(*this, static_cast<float*>(db.data), dw_write, static_cast<const cuda::bf16*>(dy.data),
                          nullptr, nullptr, s.N, s.O);
}

// The two products accumulate in fp32 scratch, then one pass adds the bias
// and rounds: the numerics of one GEMM over [a | b], without its copy.
void CudaOps::concat_matmul_forward(Tensor y, Tensor a, Tensor b, Tensor w, Tensor bias) {
    const char* op = "concat_matmul_forward";
    const ConcatLinear s = check_concat_linear(op, y, a, b, w);
    check(bias.empty() || bias.numel() == s.O, op, "bias " + bias.shape_str() + " for w " + w.shape_str());
    cuda::require_dtype(op, "bias", bias, DType::BF16);
    if (!s.N || !s.O) return;
    const int64_t K = s.A + s.B;
    auto* acc = static_cast<float*>(scratch(size_t(s.N * s.O) * sizeof(float)));
    const auto* wb = static_cast<const cuda::bf16*>(w.data) + s.A;
    gemm(true, false, s.O, s.N, s.A, w.data, w.dtype, K, a.data, a.dtype, s.A, acc, DType::F32, s.O, 0.0f, nullptr);
    gemm(true, false, s.O, s.N, s.B, wb, w.dtype, K, b.data, b.dtype, s.B, acc, DType::F32, s.O, 1.0f, nullptr);
    constexpr int kThreads = 256;
    add_bias_round_kernel<<<cuda::blocks_for(s.N * s.O, kThreads, 4096), kThreads, 0, stream_>>>(
        static_cast<cuda::bf16*>(y.data), acc, bias.empty() ? nullptr : static_cast<const cuda::bf16*>(bias.data),
        s.N * s.O, s.O);
    MOE_CUDA_LAUNCHED();
}

// Each input's gradient from its block of w's columns; dw's two column
// blocks written in place (leading dimension A+B).
void CudaOps::concat_matmul_backward(Tensor da, Tensor db, Tensor dw, Tensor dbias, Tensor dy, Tensor a, Tensor b,
                                     Tensor w, Write dx_write, Write dw_write) {
    const char* op = "concat_matmul_backward";
    const ConcatLinear s = check_concat_linear(op, dy, a, b, w);
    cuda::require_dtype(op, "da", da, DType::BF16);
    cuda::require_dtype(op, "db", db, DType::BF16);
    cuda::require_dtype(op, "dw", dw, DType::F32);
    cuda::require_dtype(op, "dbias", dbias, DType::F32);
    check((da.empty() || da.numel() == a.numel()) && (db.empty() || db.numel() == b.numel()) &&
              (dw.empty() || dw.numel() == w.numel()) && (dbias.empty() || dbias.numel() == s.O),
          op,
          "gradients da " + da.shape_str() + ", db " + db.shape_str() + ", dw " + dw.shape_str() + ", dbias " +
              dbias.shape_str() + " for a " + a.shape_str() + ", b " + b.shape_str() + ", w " + w.shape_str());
    const int64_t K = s.A + s.B;
    const auto* wb = static_cast<const cuda::bf16*>(w.data) + s.A;
    const float dx_beta = beta_for(dx_write), dw_beta = beta_for(dw_write);
    if (!da.empty())
        gemm(false, false, s.A, s.N, s.O, w.data, w.dtype, K, dy.data, dy.dtype, s.O, da.data, da.dtype, s.A,
             dx_beta, nullptr);
    if (!db.empty())
        gemm(false, false, s.B, s.N, s.O, wb, w.dtype, K, dy.data, dy.dtype, s.O, db.data, db.dtype, s.B, dx_beta,
             nullptr);
    if (!dw.empty()) {
        gemm(false, true, s.A, s.O, s.N, a.data, a.dtype, s.A, dy.data, dy.dtype, s.O, dw.data, dw.dtype, K, dw_beta,
             nullptr);
        gemm(false, true, s.B, s.O, s.N, b.data, b.dtype, s.B, dy.data, dy.dtype, s.O, static_cast<float*>(dw.data) + s.A,
             dw.dtype, K, dw_beta, nullptr);
    }
    if (!dbias.empty())
        cuda::column_sums(*this, static_cast<float*>(dbias.data), dw_write, static_cast<const cuda::bf16*>(dy.data),
                          nullptr, nullptr, s.N, s.O);
}

void CudaOps::grouped_matmul_forward(Tensor y, Tensor x, Tensor w, const std::vector<int64_t>& offsets) {
    check(w.ndim == 3, "grouped_matmul_forward", "w must be [E,O,I], got " + w.shape_str());
    const int64_t E = w.dim(0), O = w.dim(1), I = w.dim(2), R = x.dim(0);
    check(x.row_size() == I && y.row_size() == O && y.dim(0) == R, "grouped_matmul_forward",
          "expected x [R,I], y [R,O] for w " + w.shape_str() + "; got x " + x.shape_str() + ", y " + y.shape_str());
    check_offsets("grouped_matmul_forward", offsets, E, R);
    for (const Tensor* t : {&y, &x, &w}) cuda::require_dtype("grouped_matmul_forward", "y, x and w", *t, DType::BF16);
    const int lanes = expert_lanes(E, expert_streams_);
    fork_lanes(lanes);
    for (int64_t e = 0; e < E; ++e) {
        const int64_t rows = offsets[e + 1] - offsets[e];
        if (!rows) continue;
        Tensor we = w.rows(e, e + 1), xe = x.rows(offsets[e], offsets[e + 1]), ye = y.rows(offsets[e], offsets[e + 1]);
        gemm(true, false, O, rows, I, we.data, w.dtype, I, xe.data, x.dtype, I, ye.data, y.dtype, O, 0.0f, nullptr,
             GemmVaries::n, lane_of(e, lanes));
    }
    join_lanes(lanes);
}

void CudaOps::grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                      const std::vector<int64_t>& offsets, Write dx_write, Write dw_write) {
    check(w.ndim == 3, "grouped_matmul_backward", "w must be [E,O,I], got " + w.shape_str());
    const int64_t E = w.dim(0), O = w.dim(1), I = w.dim(2), R = x.dim(0);
    check(x.row_size() == I && dy.row_size() == O && dy.dim(0) == R && (dx.empty() || dx.numel() == x.numel()) &&
              (dw.empty() || dw.numel() == w.numel()),
          "grouped_matmul_backward",
          "expected x [R,I], dy [R,O] and gradients like x and w " + w.shape_str() + "; got x " + x.shape_str() +
              ", dy " + dy.shape_str() + ", dx " + dx.shape_str() + ", dw " + dw.shape_str());
    check_offsets("grouped_matmul_backward", offsets, E, R);
    for (const Tensor* t : {&dy, &x, &w, &dx})
        cuda::require_dtype("grouped_matmul_backward", "dy, x, w and dx", *t, DType::BF16);
    cuda::require_dtype("grouped_matmul_backward", "dw", dw, DType::F32);
    // Every row of dx is some expert's, so overwriting dx needs no zeroing;
    // an expert without rows has a zero dw.
    for (int64_t e = 0; e < E; ++e)
        if (offsets[e] == offsets[e + 1] && !dw.empty() && dw_write == Write::overwrite) zero(dw.rows(e, e + 1));
    const int lanes = expert_lanes(E, expert_streams_);
    fork_lanes(lanes);
    for (int64_t e = 0; e < E; ++e) {
        const int64_t r0 = offsets[e], r1 = offsets[e + 1];
        if (r0 == r1) continue;
        const int lane = lane_of(e, lanes);
        const void* we = w.rows(e, e + 1).data;
        const void* dye = dy.rows(r0, r1).data;
        if (!dx.empty())
            gemm(false, false, I, r1 - r0, O, we, w.dtype, I, dye, dy.dtype, O, dx.rows(r0, r1).data, dx.dtype, I,
                 beta_for(dx_write), nullptr, GemmVaries::n, lane);
        if (!dw.empty())
            gemm(false, true, I, O, r1 - r0, x.rows(r0, r1).data, x.dtype, I, dye, dy.dtype, O, dw.rows(e, e + 1).data,
                 dw.dtype, I, beta_for(dw_write), nullptr, GemmVaries::k, lane);
    }
    join_lanes(lanes);
}

}  // namespace moe
