// The CUDA backend: the ops of kernels/ops.h on one GPU, every op family in
// its own .cu file beside this one. Precision is mixed (Precision::mixed_bf16):
// activations and working weights in bf16, statistics, losses, gradients of
// parameters, master weights and AdamW moments in fp32; every kernel
// accumulates in fp32. Dense and grouped GEMMs go through cuBLASLt.
//
// All work is queued on one stream, in call order (a grouped GEMM's experts
// fan out to side streams and join back before the next op; matmul.cu);
// copy_to_host, plan_routing
// and the reductions returning a host value wait for it, copy_from_host does
// not (it stages through a pinned ring, upload_ring.h). Kernels never use
// atomics on floats: every output is written by one thread in a fixed order,
// so a step gives the same bits on every run.
//
// Memory: the engine plans its tensors in arenas (one alloc each); the
// backend's own fixed scratch (cuBLASLt workspace, reduction partials, small
// uploads) is allocated at construction, and a growable scratch (sorting in
// the embedding backward, the routing plan's counts) on the first call that
// needs it: a step of the same shapes allocates nothing.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/cuda/upload_ring.h"
#include "kernels/ops.h"

namespace moe {

struct MatmulPlans;  // cuBLASLt descriptors and algorithms by shape (matmul.cu)
void destroy_matmul_plans(MatmulPlans* plans);

class CudaOps final : public Ops {
public:
    // Binds the calling thread to GPU `device` and creates the stream and
    // cuBLASLt handle. Throws std::runtime_error naming the device on failure.
    explicit CudaOps(int device);
    ~CudaOps() override;
    CudaOps(const CudaOps&) = delete;
    CudaOps& operator=(const CudaOps&) = delete;

    Device device() const override { return Device::CUDA; }
    std::string device_name() const override;
    Precision training_precision() const override { return Precision::mixed_bf16(); }
    cudaStream_t stream() const { return stream_; }
    // Waits for all queued work; throws on an asynchronous kernel error.
    void synchronize() override;
    // Device memory in use on this GPU (all processes, the CUDA context too).
    size_t device_memory_used() const override;
    size_t memory_available() const override;

    void* alloc(size_t bytes) override;
    void release(void* p) override;
    void copy_from_host(Tensor dst, const void* src) override;
    void copy_to_host(void* dst, Tensor src) override;

    void zero(Tensor t) override;
    void copy(Tensor dst, Tensor src) override;
    void add(Tensor y, Tensor x, double alpha = 1) override;
    void add_tensors(Tensor y, Tensor a, Tensor b) override;
    void scale(Tensor y, double alpha) override;
    std::vector<double> sum_squares(const std::vector<Tensor>& xs) override;
    double sum(Tensor x) override;

    void embedding_forward(Tensor out, Tensor ids, Tensor table) override;
    void embedding_backward(Tensor dtable, Tensor ids, Tensor dout, Write dw_write) override;

    void rmsnorm_forward(Tensor y, Tensor rstd, Tensor x, Tensor w, double eps) override;
    void rmsnorm_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd, Write dx_write,
                          Write dw_write) override;

    void matmul_forward(Tensor y, Tensor x, Tensor w, Tensor b) override;
    void matmul_residual_forward(Tensor y, Tensor x, Tensor w, Tensor residual) override;
    void matmul_backward(Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w, Write dx_write,
                         Write dw_write) override;
    void concat_matmul_forward(Tensor y, Tensor a, Tensor b, Tensor w, Tensor bias) override;
    void concat_matmul_backward(Tensor da, Tensor db, Tensor dw, Tensor dbias, Tensor dy, Tensor a, Tensor b, Tensor w,
                                Write dx_write, Write dw_write) override;
    void grouped_matmul_forward(Tensor y, Tensor x, Tensor w, const std::vector<int64_t>& offsets) override;
    void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                 const std::vector<int64_t>& offsets, Write dx_write, Write dw_write) override;

    void silu_forward(Tensor y, Tensor x) override;
    void silu_backward(Tensor dx, Tensor dy, Tensor x) override;
    void swiglu_forward(Tensor out, Tensor gate_up) override;
    void swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) override;

    void rope_forward(Heads x, double theta, int64_t first_position) override;
    void rope_backward(Tensor dx, double theta) override;

    void split_qkv(Tensor q, Tensor k, Tensor v, Tensor qkv) override;
    void join_qkv(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv) override;
    void attention_forward(Tensor out, Tensor lse, Heads q, Heads k, Heads v) override;
    void attention_backward(Heads dq, Heads dk, Heads dv, Tensor dout, Heads q, Heads k, Heads v, Tensor out,
                            Tensor lse, Write write, std::optional<double> rope_theta) override;
    void attention_decode(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, int64_t first_position) override;

    void router_forward(Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w, Tensor logits,
                        const RouterScoring& scoring) override;
    void router_backward(Tensor dlogits, Tensor dtopk_w, Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w,
                         const RouterScoring& scoring, const std::vector<double>& aux_coef, double z_coef) override;
    void router_stats(Tensor stats, Tensor probs, Tensor lse, const RouterScoring& scoring) override;

    RoutingCounts plan_routing(Tensor slot_row, Tensor row_token, Tensor expert_of_slot, int num_experts,
                               std::optional<double> capacity_factor) override;

    void permute_forward(Tensor xe, Tensor x, Tensor row_token) override;
    void permute_backward(Tensor dx, Tensor dxe, Tensor slot_row, Write dx_write, Tensor residual) override;
    void combine_forward(Tensor y, Tensor ye, Tensor w, Tensor slot_row, Write y_write, Tensor residual) override;
    void combine_backward(Tensor dye, Tensor dw, Tensor dy, Tensor ye, Tensor w, Tensor slot_row,
                          Write dye_write) override;

    void dynamics_forward(Tensor h_out, Tensor v_out, Tensor h, Tensor v, Tensor act, Tensor weight, Tensor bias,
                          Tensor mu, const DynamicsParams& p) override;
    void dynamics_control(Tensor ctrl, Tensor act, Tensor weight, Tensor bias) override;
    void dynamics_backward(Tensor dh, Tensor dv, Tensor dctrl, Tensor dmu, Tensor dbias, Tensor dh_out, Tensor dv_out,
                           Tensor h, Tensor v, Tensor act, Tensor weight, Tensor bias, Tensor mu,
                           const DynamicsParams& p, Write write, Write dw_write) override;

    void cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dloss) override;

    void adamw_step(const std::vector<AdamWTensor>& tensors, const AdamWParams& p) override;

    // ---- scratch shared by the op families (kernels/cuda/*.cu) -------------
    // Per-block fp64 partial sums for the deterministic reductions: room for
    // kMaxPartials doubles (the blocks of every gradient of a large model).
    static constexpr int kMaxPartials = 65536;
    double* partials() const { return partials_; }
    // Pinned host doubles for results read back: room for kMaxPartials.
    double* host_results() const { return host_results_; }
    // Device bytes for small per-call uploads (router coefficients), filled
    // with copy_from_host.
    static constexpr size_t kUploadBytes = size_t(1) << 16;
    void* upload_area() const { return upload_; }
    // At least `bytes` of device scratch, valid until the next call; grows
    // (after waiting for queued work) only when a larger size is asked for.
    void* scratch(size_t bytes);
    // RoPE's fp32 (cos, sin) pairs for positions [0, positions) and pair i
    // of [0, hd/2), pair (p, i) at [2 (p * hd/2 + i)] (rope.cu). Computed on
    // the host in double as the CPU reference computes the angle and uploaded
    // when a call needs more positions (then room for twice as many) or
    // another hd or theta: not on every call.
    const float* rope_table(int64_t positions, int64_t hd, double theta);
    int64_t rope_table_positions() const { return rope_positions_; }
    static constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;
    // cuBLASLt plans made so far (shapes seen; a grouped GEMM's expert sizes
    // count by size class).
    size_t matmul_plan_count() const;
    // cuBLASLt's candidates for each GEMM planned so far (moe-bench
    // --gemm-candidates): the plan's own algorithm (the heuristic's first)
    // and the heuristic's next ones, `count` in all, each timed alone on the
    // plan's problem at its planned size for about `seconds` (a plan's later
    // calls are as before).
    struct GemmCandidates {
        std::string shape;            // cuBLASLt's m x n x k (planned), op(a) op(b), types, epilogue
        double flops = 0;             // 2 m n k
        uint64_t runs = 0;            // calls the plan ran so far
        std::vector<double> seconds;  // a call: [0] the plan's algorithm, then the others;
                                      // none where the GPU had no room for the operands
    };
    std::vector<GemmCandidates> gemm_candidates(int count, double seconds);
    // Attention's tile math (attention.cu): wgmma where the GPU runs it (a
    // compute 9.0 GPU and code built for sm_90a), else mma.sync. The
    // environment's MOE_CUDA_ATTENTION=mma_sync chooses mma.sync anyway, =wgmma
    // insists on wgmma (construction throws where there is none).
    bool wgmma_available() const { return wgmma_available_; }
    bool attention_wgmma() const { return attention_wgmma_; }
    // Chooses between them (tests and benchmarks compare the two); throws
    // std::invalid_argument for wgmma where there is none.
    void set_attention_wgmma(bool on);
    // The most query heads of one kv group that a block of the attention
    // forward or dq kernel takes, a warpgroup each, reading each K and V
    // tile once for all of them (attention.cu): kMaxAttentionHeads, or what
    // the environment's MOE_CUDA_ATTENTION_HEADS says (1, 2 or 4). A call
    // takes the most of them that divides its group (nh / nkv); the bits
    // are the same whichever.
    static constexpr int kMaxAttentionHeads = 4;
    int attention_heads() const { return attention_heads_; }
    // Sets it (benchmarks compare); std::invalid_argument for other than 1, 2, 4.
    void set_attention_heads(int heads);
    // Side streams a grouped GEMM spreads its experts over, each with its
    // own cuBLASLt workspace (matmul.cu); kMainLane names the main stream.
    // expert_streams() of them are used: kExpertLanes, or what the
    // environment's MOE_CUDA_EXPERT_STREAMS says (0: the main stream alone).
    static constexpr int kExpertLanes = 4, kMainLane = -1;
    int expert_streams() const { return expert_streams_; }

private:
    int device_;
    bool wgmma_available_ = false, attention_wgmma_ = false;
    int expert_streams_ = kExpertLanes, attention_heads_ = kMaxAttentionHeads;
    cudaStream_t stream_ = nullptr;
    cublasLtHandle_t lt_ = nullptr;
    void* lt_workspace_ = nullptr;
    cudaStream_t lanes_[kExpertLanes] = {};
    void* lane_workspaces_[kExpertLanes] = {};
    cudaEvent_t fork_ = nullptr, joined_[kExpertLanes] = {};
    double* partials_ = nullptr;
    double* host_results_ = nullptr;
    void* upload_ = nullptr;
    void* scratch_ = nullptr;
    size_t scratch_bytes_ = 0;
    MatmulPlans* matmul_plans_ = nullptr;
    float* rope_table_ = nullptr;  // see rope_table
    int64_t rope_positions_ = 0, rope_hd_ = 0;
    double rope_theta_ = 0;
    // Pinned staging of copy_from_host: a step's uploads (token ids, a
    // token_id plan per layer) many times over.
    static constexpr size_t kUploadRingBytes = size_t(16) << 20;
    cuda::UploadRing uploads_{kUploadRingBytes};
    // Runs a kernel compiled per target to learn whether the GPU's code has
    // wgmma (wgmma_probe.cu); throws where the build has no code for the GPU.
    bool probe_wgmma();
    // Which size of a GEMM changes from call to call (an expert's rows).
    enum class GemmVaries { nothing, n, k };
    // out[M,N] (column-major, ld ldc >= M) = alpha op(a) op(b) + beta c, c
    // being out itself or, given, another matrix of out's layout (matmul.cu),
    // queued on the main stream or on side stream `lane`.
    void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const void* a, DType a_type, int64_t lda,
              const void* b, DType b_type, int64_t ldb, void* out, DType out_type, int64_t ldc, float beta,
              const void* bias, GemmVaries varies = GemmVaries::nothing, int lane = kMainLane,
              const void* c = nullptr);
    // Side streams 0..lanes-1 start after the work queued so far (fork),
    // and the main stream continues after theirs (join).
    void fork_lanes(int lanes);
    void join_lanes(int lanes);
};

// Whether attention runs on wgmma, given MOE_CUDA_ATTENTION's value (null
// when unset) and whether the GPU and build have wgmma: unset takes wgmma
// where there is some. Throws std::invalid_argument for a value that is no
// choice, std::runtime_error for wgmma where there is none.
bool attention_wgmma_choice(const char* setting, bool available);

// The most query heads an attention block takes, given
// MOE_CUDA_ATTENTION_HEADS's value (null when unset:
// CudaOps::kMaxAttentionHeads). Throws std::invalid_argument for a value
// other than 1, 2 or 4.
int attention_heads_choice(const char* setting);

// The side streams of grouped GEMMs, given MOE_CUDA_EXPERT_STREAMS's value
// (null when unset: CudaOps::kExpertLanes). Throws std::invalid_argument for
// a value that is not a count from 0 to kExpertLanes.
int expert_streams_choice(const char* setting);

// GPUs this process can see (0 when there is no driver or no device).
int cuda_device_count();

// The memory of a GPU in bytes, all of it (what a plan is held against).
size_t cuda_device_memory(int device);

}  // namespace moe
