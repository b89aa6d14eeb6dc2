// cuBLASLt's matmul for the emulated GPU, so that CudaOps::gemm runs as it
// is (its cached plans, size classes, alignments, lanes and fallback): the
// descriptors, layouts and preferences keep what is set on them;
// cublasLtMatmulAlgoGetHeuristic checks the problem as cuBLASLt documents
// it and returns up to three ranked algorithms (computing alike) that
// remember what they were chosen for; and
// cublasLtMatmul checks the call against the layouts and that algorithm,
// then queues the product (fp32, from the descriptors as they are at the
// call) on its stream. One assumption is the backend's, not cuBLASLt's
// documented promise: an algorithm runs every problem no larger than the
// one it was chosen for (larger ones are refused, NOT_SUPPORTED).
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "tests/emulated/emulated_streams.h"

namespace {

struct Desc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    int bias_type = -1;  // -1: the output's
    const void* bias = nullptr;
};
struct Layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct Preference {
    uint64_t workspace = 0;
    uint32_t alignment[4] = {256, 256, 256, 256};  // a, b, c, d: cuBLASLt's defaults
};
// What an algorithm was chosen for, in cublasLtMatmulAlgo_t's bytes, and
// which of the heuristic's ranked results it is (they compute alike).
struct Chosen {
    uint64_t m, n, k;
    uint32_t alignment[4];
    uint32_t rank;
};
constexpr int kRanked = 3;  // results the heuristic offers at most
static_assert(sizeof(Chosen) <= sizeof(cublasLtMatmulAlgo_t), "an algorithm's record fits its opaque bytes");

Desc& desc(cublasLtMatmulDesc_t d) { return *reinterpret_cast<Desc*>(d); }
const Layout& layout(cublasLtMatrixLayout_t l) { return *reinterpret_cast<const Layout*>(l); }
Preference& preference(cublasLtMatmulPreference_t p) { return *reinterpret_cast<Preference*>(p); }

bool bf16_or_f32(cudaDataType_t t) { return t == CUDA_R_16BF || t == CUDA_R_32F; }

// The problem out (m x n) = op(a) (m x k) op(b) (k x n), column-major, as the
// layouts give it; false where they do not fit together.
struct Problem {
    uint64_t m, n, k;
};
bool problem_of(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& out, Problem& p) {
    const uint64_t a_rows = d.trans_a == CUBLAS_OP_N ? a.rows : a.cols, a_cols = d.trans_a == CUBLAS_OP_N ? a.cols : a.rows;
    const uint64_t b_rows = d.trans_b == CUBLAS_OP_N ? b.rows : b.cols, b_cols = d.trans_b == CUBLAS_OP_N ? b.cols : b.rows;
    p = {a_rows, b_cols, a_cols};
    const auto ld_fits = [](const Layout& l) { return l.ld > 0 && uint64_t(l.ld) >= l.rows; };
    return b_rows == p.k && c.rows == p.m && c.cols == p.n && out.rows == p.m && out.cols == p.n &&
           out.ld == c.ld && out.type == c.type && ld_fits(a) && ld_fits(b) && ld_fits(c) && a.type == b.type &&
           bf16_or_f32(a.type) && bf16_or_f32(c.type) && d.compute == CUBLAS_COMPUTE_32F && d.scale == CUDA_R_32F &&
           p.m > 0 && p.n > 0 && p.k > 0;
}

float element(const void* p, cudaDataType_t t, uint64_t i) {
    return t == CUDA_R_16BF ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
                            : static_cast<const float*>(p)[i];
}

bool aligned(const void* p, uint32_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
    static int handle;
    *h = reinterpret_cast<cublasLtHandle_t>(&handle);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
    *d = reinterpret_cast<cublasLtMatmulDesc_t>(new Desc{compute, scale});
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete &desc(d);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attribute,
                                              const void* value, size_t bytes) {
    Desc& m = desc(d);
    const auto take = [&](auto& field) {
        if (bytes != sizeof field) return CUBLAS_STATUS_INVALID_VALUE;
        std::memcpy(&field, value, bytes);
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attribute) {
        case CUBLASLT_MATMUL_DESC_TRANSA: return take(m.trans_a);
        case CUBLASLT_MATMUL_DESC_TRANSB: return take(m.trans_b);
        case CUBLASLT_MATMUL_DESC_EPILOGUE: return take(m.epilogue);
        case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return take(m.bias_type);
        case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return take(m.bias);
        default: return CUBLAS_STATUS_NOT_SUPPORTED;  // not modelled: the backend does not set it
    }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    *l = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete &layout(l);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attribute,
                                                const void* value, size_t bytes) {
    Layout& m = *reinterpret_cast<Layout*>(l);
    if (bytes != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
    switch (attribute) {
        case CUBLASLT_MATRIX_LAYOUT_ROWS: std::memcpy(&m.rows, value, bytes); return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATRIX_LAYOUT_COLS: std::memcpy(&m.cols, value, bytes); return CUBLAS_STATUS_SUCCESS;
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
    *p = reinterpret_cast<cublasLtMatmulPreference_t>(new Preference);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete &preference(p);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attribute, const void* value,
                                                    size_t bytes) {
    Preference& m = preference(p);
    const auto take = [&](auto& field) {
        if (bytes != sizeof field) return CUBLAS_STATUS_INVALID_VALUE;
        std::memcpy(&field, value, bytes);
        return CUBLAS_STATUS_SUCCESS;
    };
    switch (attribute) {
        case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: return take(m.workspace);
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: return take(m.alignment[0]);
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: return take(m.alignment[1]);
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: return take(m.alignment[2]);
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: return take(m.alignment[3]);
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t out, cublasLtMatmulPreference_t p,
                                              int requested, cublasLtMatmulHeuristicResult_t results[], int* found) {
    Problem problem;
    if (requested < 1 || !problem_of(desc(d), layout(a), layout(b), layout(c), layout(out), problem))
        return CUBLAS_STATUS_INVALID_VALUE;
    *found = requested < kRanked ? requested : kRanked;
    for (int r = 0; r < *found; ++r) {
        const Chosen chosen{problem.m, problem.n, problem.k,
                            {preference(p).alignment[0], preference(p).alignment[1], preference(p).alignment[2],
                             preference(p).alignment[3]},
                            uint32_t(r)};
        std::memset(&results[r], 0, sizeof results[r]);
        std::memcpy(&results[r].algo, &chosen, sizeof chosen);
        results[r].state = CUBLAS_STATUS_SUCCESS;
        results[r].wavesCount = 1;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t d, const void* alpha_p, const void* a_p,
                              cublasLtMatrixLayout_t a_l, const void* b_p, cublasLtMatrixLayout_t b_l,
                              const void* beta_p, const void* c_p, cublasLtMatrixLayout_t c_l, void* out_p,
                              cublasLtMatrixLayout_t out_l, const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
    const Desc m = desc(d);
    const Layout a = layout(a_l), b = layout(b_l), c = layout(c_l), out = layout(out_l);
    Problem p;
    if (!algo || !problem_of(m, a, b, c, out, p) || (workspace_bytes && !workspace)) return CUBLAS_STATUS_INVALID_VALUE;
    Chosen chosen;
    std::memcpy(&chosen, algo, sizeof chosen);
    if (p.m > chosen.m || p.n > chosen.n || p.k > chosen.k) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!aligned(a_p, chosen.alignment[0]) || !aligned(b_p, chosen.alignment[1]) ||
        !aligned(c_p, chosen.alignment[2]) || !aligned(out_p, chosen.alignment[3]))
        return CUBLAS_STATUS_INVALID_VALUE;  // an algorithm for better-aligned data
    const bool bias = m.epilogue == CUBLASLT_EPILOGUE_BIAS;
    if (m.epilogue != CUBLASLT_EPILOGUE_DEFAULT && !bias) return CUBLAS_STATUS_NOT_SUPPORTED;  // not modelled
    if (bias && !m.bias) return CUBLAS_STATUS_INVALID_VALUE;
    const cudaDataType_t bias_type = m.bias_type < 0 ? out.type : cudaDataType_t(m.bias_type);
    float alpha, beta;
    std::memcpy(&alpha, alpha_p, sizeof alpha);  // host pointers: cuBLASLt's default
    std::memcpy(&beta, beta_p, sizeof beta);
    moe::emulated::enqueue(stream, [=] {
        for (uint64_t j = 0; j < p.n; ++j)
            for (uint64_t i = 0; i < p.m; ++i) {
                float acc = 0;
                for (uint64_t q = 0; q < p.k; ++q)
                    acc += element(a_p, a.type, m.trans_a == CUBLAS_OP_N ? i + q * a.ld : q + i * a.ld) *
                           element(b_p, b.type, m.trans_b == CUBLAS_OP_N ? q + j * b.ld : j + q * b.ld);
                acc *= alpha;
                if (beta != 0) acc += beta * element(c_p, c.type, i + j * c.ld);
                if (bias) acc += element(m.bias, bias_type, i);
                const uint64_t o = i + j * out.ld;
                if (out.type == CUDA_R_16BF)
                    static_cast<__nv_bfloat16*>(out_p)[o] = __float2bfloat16_rn(acc);
                else
                    static_cast<float*>(out_p)[o] = acc;
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
