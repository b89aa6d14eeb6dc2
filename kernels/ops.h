// The compute interface the model is written against. The CPU backend
// (kernels/cpu) is the readable reference; a CUDA backend implements the same.
//
// Conventions, for every op:
// - Shapes are given in the comments; N = B*T tokens, rows of a 2-D tensor are
//   tokens. Index tensors are I32. Float tensors play one of four roles, each
//   with the backend's dtype for it (see Precision below):
//     act    activations and their gradients          CPU: F32 (F64)  CUDA: BF16
//     stat   norm/softmax statistics (rstd, lse), router logits, probs and
//            weights, per-token losses                 CPU: F32 (F64)  CUDA: F32
//     work   the weights the compute reads             CPU: F32 (F64)  CUDA: BF16
//     master parameters' master copy, gradients and AdamW moments
//                                                      CPU: F32 (F64)  CUDA: F32
//   Each op's comment names the role of its float tensors where it is not act.
//   The CPU backend computes in the tensors' dtype (F64 for gradient checks).
// - Backward ops ACCUMULATE (+=) into every gradient they produce, inputs and
//   parameters alike, unless told otherwise. Two always overwrite:
//   swiglu_backward and cross_entropy, whose gradients are large
//   scratch no one adds to. The others let the caller choose (Write) for the
//   outputs that are often their buffers' only or first writers: dx_write for
//   input gradients, dw_write for parameter gradients (master), which the
//   step's first micro-batch writes and later ones add to, so no gradient
//   buffer is zeroed before a step. An overwritten gradient is written whole,
//   zeros where nothing contributes (an expert without rows, an unused
//   vocabulary row, an empty batch). An empty() gradient tensor means "not
//   wanted" and is skipped.
// - "stats" tensors (rstd, attention's lse) are written by the forward and
//   read by the backward, so the backward recomputes nothing it can keep
//   cheaply.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/heads.h"
#include "kernels/routing_plan.h"
#include "kernels/tensor.h"

namespace moe {

enum class Device { CPU, CUDA };

// alloc() found too little device memory: how much was asked and was free.
class OutOfDeviceMemory : public std::runtime_error {
public:
    OutOfDeviceMemory(size_t requested, size_t free_bytes, size_t total_bytes, const std::string& device)
        : std::runtime_error(device + ": out of memory allocating " + std::to_string(requested) + " bytes (" +
                             std::to_string(free_bytes) + " free of " + std::to_string(total_bytes) + ")"),
          requested(requested), free_bytes(free_bytes), total_bytes(total_bytes) {}
    size_t requested, free_bytes, total_bytes;
};

// The dtype of each tensor role (above) for a backend.
struct Precision {
    DType act, stat, work, master;
    // Every role in one dtype: the CPU backend (F32, or F64 for gradient checks).
    Precision(DType dt = DType::F32) : act(dt), stat(dt), work(dt), master(dt) {}
    Precision(DType act_, DType stat_, DType work_, DType master_)
        : act(act_), stat(stat_), work(work_), master(master_) {}
    // The CUDA backend: bf16 compute, fp32 statistics, master weights, gradients.
    static Precision mixed_bf16() { return {DType::BF16, DType::F32, DType::BF16, DType::F32}; }
};

// Hyper-parameters of the INL dynamics update (MODEL.md).
struct DynamicsParams {
    double dt = 0.1, beta_max = 2.0, velocity_max = 10.0, mu_min = 0.0, mu_max = 2.0;
};

// How an op that takes the choice writes its output: added to what the buffer
// holds, or written over it, which spares the caller a zeroing pass and the
// op a read of the old values.
enum class Write { add, overwrite };

// How the learned router scores tokens and chooses their experts
// (docs/MODEL-OPTIONS.md "Router options").
struct RouterScoring {
    bool sigmoid = false;    // scores sigmoid(logits); else softmax(logits)
    bool normalize = true;   // combine weights renormalised over the chosen experts
    Tensor bias;             // stat [E] added to the scores to choose only (empty: none)
    int groups = 1;          // experts in this many groups of consecutive experts,
    int group_limit = 1;     // a token choosing among those of its best group_limit (groups > 1)
};

// What an AdamW step shares over all its tensors.
struct AdamWParams {
    double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
    int64_t step = 1;          // 1-based, for bias correction
    double grad_scale = 1.0;   // multiplies the gradient first (clipping)
};

// One parameter of an AdamW step: param, grad, m, v master, all one size;
// work, the parameter's working copy, is rewritten from param unless it is
// empty or param itself (same memory). Norms and biases take no decay.
struct AdamWTensor {
    Tensor param, grad, m, v, work;
    double weight_decay = 0;
};

class Ops {
public:
    virtual ~Ops() = default;
    virtual Device device() const = 0;
    // Where this backend computes, for the layout report: "cpu", "cuda:0", ...
    virtual std::string device_name() const = 0;
    // The dtypes a model trains with on this backend.
    virtual Precision training_precision() const = 0;
    // Waits until the work queued so far is done (timing; the CPU computes
    // synchronously).
    virtual void synchronize() {}
    // Device memory in use by this process, 0 on the CPU.
    virtual size_t device_memory_used() const { return 0; }
    // Bytes that alloc() can still hand out: the GPU's free memory, or the
    // machine's available RAM (what a run is sized against before it allocates).
    virtual size_t memory_available() const = 0;

    // ---- memory -----------------------------------------------------------
    // Zero-filled, aligned to 256; throws OutOfDeviceMemory (CPU: bad_alloc).
    virtual void* alloc(size_t bytes) = 0;
    virtual void release(void* p) = 0;
    virtual void copy_from_host(Tensor dst, const void* src) = 0;  // dst.bytes()
    virtual void copy_to_host(void* dst, Tensor src) = 0;          // src.bytes()

    // ---- elementwise and reductions ---------------------------------------
    virtual void zero(Tensor t) = 0;
    // Same element count; converts between float dtypes the backend holds
    // (CPU: F32 <-> F64; CUDA: F32 <-> BF16), rounding to nearest.
    virtual void copy(Tensor dst, Tensor src) = 0;
    virtual void add(Tensor y, Tensor x, double alpha = 1) = 0; // y += alpha x
    // y = a + b, all of one shape and dtype (a residual stream and a branch:
    // one pass where a copy and an add would take two).
    virtual void add_tensors(Tensor y, Tensor a, Tensor b) = 0;
    virtual void scale(Tensor y, double alpha) = 0;             // y *= alpha
    // Reductions in a fixed order (the same result on every call), in double
    // on the CPU and fp32 partials summed in double on the GPU.
    // Each tensor's sum x^2, read back together: a device waits once for all.
    virtual std::vector<double> sum_squares(const std::vector<Tensor>& xs) = 0;
    virtual double sum(Tensor x) = 0;                           // sum x

    // ---- embedding --------------------------------------------------------
    // out[N,H] = table[ids[n]]; ids I32[N] already checked against V. table:
    // work; dtable: master (a gradient).
    virtual void embedding_forward(Tensor out, Tensor ids, Tensor table) = 0;
    virtual void embedding_backward(Tensor dtable, Tensor ids, Tensor dout, Write dw_write) = 0;

    // ---- RMSNorm over the last dim: x[R,D], w[D] (work), y[R,D], rstd[R] (stat);
    //      dw: master. Statistics in fp32 (F64 on the CPU in F64). -------------
    virtual void rmsnorm_forward(Tensor y, Tensor rstd, Tensor x, Tensor w, double eps) = 0;
    virtual void rmsnorm_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd, Write dx_write,
                                  Write dw_write) = 0;

    // ---- linear: y[N,O] = x[N,I] w[O,I]^T (+ b[O]; b may be empty) -----------
    // w, b: work; dw, db: master. y may be stat (router logits in fp32). The
    // forward overwrites y; the backward writes dx (act) as dx_write says and
    // dw and db as dw_write says.
    virtual void matmul_forward(Tensor y, Tensor x, Tensor w, Tensor b) = 0;
    // y = residual + x w^T (residual like y, act): a residual add riding the
    // GEMM (on a GPU its epilogue reads residual, one rounding of the sum; on
    // the CPU the product, then residual + it). Its backward is
    // matmul_backward's; the residual's gradient is dy itself.
    virtual void matmul_residual_forward(Tensor y, Tensor x, Tensor w, Tensor residual) = 0;
    virtual void matmul_backward(Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w, Write dx_write,
                                 Write dw_write) = 0;
    // Linear over a row-wise concatenation, y[N,O] = [a | b] w^T (+ bias[O]):
    // a[N,A], b[N,B], w[O,A+B] (work; dw master), without an [N, A+B] copy of
    // the inputs (the dynamics controller reads [h | v]). The backward writes
    // da and db (act, either may be empty) as dx_write says, dw and dbias as
    // dw_write says.
    virtual void concat_matmul_forward(Tensor y, Tensor a, Tensor b, Tensor w, Tensor bias) = 0;
    virtual void concat_matmul_backward(Tensor da, Tensor db, Tensor dw, Tensor dbias, Tensor dy, Tensor a, Tensor b,
                                        Tensor w, Write dx_write, Write dw_write) = 0;
    // Grouped linear over expert-sorted rows: rows offsets[e]..offsets[e+1] of
    // x[R,I] use w[e] of w[E,O,I]. offsets is a host array of E+1 entries.
    // The backward writes dx and dw as dx_write and dw_write say.
    virtual void grouped_matmul_forward(Tensor y, Tensor x, Tensor w, const std::vector<int64_t>& offsets) = 0;
    virtual void grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                         const std::vector<int64_t>& offsets, Write dx_write, Write dw_write) = 0;

    // ---- activations ------------------------------------------------------
    virtual void silu_forward(Tensor y, Tensor x) = 0;
    virtual void silu_backward(Tensor dx, Tensor dy, Tensor x) = 0;
    // out[R,I] = silu(gate) * up from gate_up[R,2I] = [gate | up] (one GEMM
    // of the experts' fused gate and up projections writes it).
    virtual void swiglu_forward(Tensor out, Tensor gate_up) = 0;
    // Writes (does not add to) dgate_up[R,2I] = [dgate | dup]: the experts'
    // scratch, the largest activations of a step, where adding would cost a
    // zeroing pass and a read.
    virtual void swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) = 0;

    // ---- RoPE, rotate-half, in place on x[B,T,heads,hd] -------------------
    // (or on some heads of each position's row: the stacked projection's q
    // and k heads, turned where they lie). Position first_position + t: 0 in
    // training, where the cache ends when a decoder appends rows.
    virtual void rope_forward(Heads x, double theta, int64_t first_position) = 0;
    // In place on the gradient: dx = R^T dy.
    virtual void rope_backward(Tensor dx, double theta) = 0;

    // ---- the fused q, k, v projection's output ------------------------------
    // qkv[B,T,nh+2nkv,hd] holds each position's nh query heads, then its nkv
    // key heads, then its nkv value heads: what one GEMM over the stacked
    // projections [wq; wk; wv] writes. RoPE and attention work on its heads
    // where they lie (Heads); with qk-norm, whose norms take rows of their
    // own, split_qkv copies them out to q[B,T,nh,hd] and k, v[B,T,nkv,hd],
    // and join_qkv brings dq, dk and dv back into dqkv for the projection's
    // one backward GEMM.
    virtual void split_qkv(Tensor q, Tensor k, Tensor v, Tensor qkv) = 0;
    virtual void join_qkv(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv) = 0;

    // ---- causal GQA attention ---------------------------------------------
    // q[B,T,nh,hd], k,v[B,T,nkv,hd] -> out[B,T,nh,hd], lse[B,nh,T] (stat: the
    // log-sum-exp of the scaled, masked scores of each query). Scale 1/sqrt(hd).
    // q, k, v, dq, dk and dv are Heads: whole tensors or the stacked
    // projection's heads (k and v, and dk and dv, in rows of as many heads).
    // The backward writes dq, dk and dv as write says. With rope_theta, q and
    // k are rope_forward(., rope_theta, 0)'s outputs and dq, dk take the
    // gradients of its inputs: rope_backward of the attention's own, in the
    // same pass (a GPU turns them before it rounds them; with Write::add only
    // the new gradient is turned).
    virtual void attention_forward(Tensor out, Tensor lse, Heads q, Heads k, Heads v) = 0;
    virtual void attention_backward(Heads dq, Heads dk, Heads dv, Tensor dout, Heads q, Heads k, Heads v,
                                    Tensor out, Tensor lse, Write write, std::optional<double> rope_theta) = 0;
    // Attention of n new queries over a KV cache (generation): q, out [n,nh,hd]
    // at positions first_position + i; k_cache, v_cache [S,nkv,hd] hold the
    // keys and values of positions 0..S-1, of which query i reads those up to
    // its own (the new rows' own keys already written). Same math as
    // attention_forward, scores and softmax in fp32; no lse (no backward).
    virtual void attention_decode(Tensor out, Tensor q, Tensor k_cache, Tensor v_cache, int64_t first_position) = 0;

    // ---- learned router (every float tensor here is stat) ------------------
    // docs/MODEL-OPTIONS.md "Router options". logits[N,E] -> probs[N,E] =
    // the scores s (softmax or sigmoid), lse[N] = the log of what a row's
    // scores are normalised by (softmax: the logits' log-sum-exp; sigmoid:
    // log sum_e s), topk_idx
    // I32[N,k] (largest key s + bias first, ties to the lower expert; with
    // groups, only experts of the token's best groups), topk_w[N,k] (the
    // chosen scores, renormalised if asked).
    virtual void router_forward(Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w, Tensor logits,
                                const RouterScoring& scoring) = 0;
    // dlogits += d/dlogits of: sum dtopk_w * topk_w  +  sum_{t,e} aux_coef[e]*q[t,e]
    //                         + z_coef * sum_t lse[t]^2,
    // q = probs for softmax, probs / exp(lse) for sigmoid (whose z_coef
    // must be 0: the z-loss is the softmax's). aux_coef is a host array [E] (the balancing loss's
    // gradient wrt each q).
    virtual void router_backward(Tensor dlogits, Tensor dtopk_w, Tensor probs, Tensor lse, Tensor topk_idx,
                                 Tensor topk_w, const RouterScoring& scoring, const std::vector<double>& aux_coef,
                                 double z_coef) = 0;
    // stats F64[E+1] on the backend: the column sums of q[N,E], then the sum
    // of lse[N]^2. Stays on the device, so a model reads every layer's stats
    // back at once.
    virtual void router_stats(Tensor stats, Tensor probs, Tensor lse, const RouterScoring& scoring) = 0;

    // ---- MoE routing plan (kernels/routing_plan.h) -------------------------
    // build_routing_plan for routing chosen on the backend: expert_of_slot
    // I32[N,k] -> slot_row I32[N*k] and row_token I32[N*k] (its first R rows)
    // on the backend; the counts come back to the host (a device waits here:
    // the expert GEMMs are sized on the host).
    virtual RoutingCounts plan_routing(Tensor slot_row, Tensor row_token, Tensor expert_of_slot, int num_experts,
                                       std::optional<double> capacity_factor) = 0;

    // ---- MoE permutation (indices from a routing plan) ---------------------
    // xe[r] = x[row_token[r]] for r < R (gather into expert order). The
    // rows are act, or stat (the expert-parallel dispatcher moves router
    // weights with these two ops).
    virtual void permute_forward(Tensor xe, Tensor x, Tensor row_token) = 0;
    // dx[t] (+)= sum_j dxe[slot_row[t*k+j]] over slots with slot_row >= 0,
    // with k = slot_row.numel() / N: a gather per token, so no two writers
    // meet. Act or stat rows, as permute_forward. With a residual (dx's
    // shape and dtype, may be empty): dx[t] = residual[t] + that, the sum
    // rounded to dx's dtype first, as a separate add_tensors would have it
    // (the same bits, one pass less).
    virtual void permute_backward(Tensor dx, Tensor dxe, Tensor slot_row, Write dx_write, Tensor residual) = 0;
    // y[t] (+)= sum_j w[t,j] * ye[slot_row[t*k+j]] over slots with slot_row >= 0;
    // w[N,k] and dw are stat. The residual as in permute_backward.
    virtual void combine_forward(Tensor y, Tensor ye, Tensor w, Tensor slot_row, Write y_write, Tensor residual) = 0;
    // dye[r] (+)= w * dy[t] (each of the R rows is one slot's);
    // dw[t,j] += dot(dy[t], ye[r]).
    virtual void combine_backward(Tensor dye, Tensor dw, Tensor dy, Tensor ye, Tensor w, Tensor slot_row,
                                  Write dye_write) = 0;

    // ---- INL dynamics -----------------------------------------------------
    // ctrl[N,3H] = (a | b | g) from the controller; mu[H] (work; dmu master);
    // h,v[N,H] -> h',v'. Both passes take the controller's last layer and
    // make ctrl themselves, as matmul_forward(ctrl, act, weight, bias) would
    // (act [N,C], weight [3H,C], bias [3H]), without keeping it: a GPU need
    // not write it out and read it back, nor save it between the passes.
    // The backward writes dh, dv and dctrl as write says, and dmu and dbias
    // (master [3H]: the controller bias's gradient, the column sums of the
    // dctrl it makes, as matmul_backward's db would sum a dctrl written over)
    // as dw_write says; each may be empty (not wanted).
    virtual void dynamics_forward(Tensor h_out, Tensor v_out, Tensor h, Tensor v, Tensor act, Tensor weight,
                                  Tensor bias, Tensor mu, const DynamicsParams& p) = 0;
    virtual void dynamics_backward(Tensor dh, Tensor dv, Tensor dctrl, Tensor dmu, Tensor dbias, Tensor dh_out,
                                   Tensor dv_out, Tensor h, Tensor v, Tensor act, Tensor weight, Tensor bias,
                                   Tensor mu, const DynamicsParams& p, Write write, Write dw_write) = 0;
    // ctrl [N,3H] written as the dynamics ops make it, bit for bit.
    virtual void dynamics_control(Tensor ctrl, Tensor act, Tensor weight, Tensor bias) = 0;

    // ---- loss -------------------------------------------------------------
    // losses[N] (stat) = logsumexp(logits[n]) - logits[n, targets[n]], in fp32
    // from logits in act (no fp32 copy of the logits). With dlogits (may be
    // empty), the same pass also writes the loss's gradient:
    // dlogits = dloss * (softmax(logits[n]) - onehot(targets[n])), each logit
    // read once for both. OVERWRITES dlogits, which may be the logits buffer
    // itself (the training forward's head: the loss and its gradient at once).
    virtual void cross_entropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, double dloss) = 0;

    // ---- optimizer --------------------------------------------------------
    // One AdamW step on every tensor of the list (decoupled weight decay
    // lr*wd*param), all in one pass: a step's hundreds of parameters cost
    // one launch on the GPU, not one each.
    virtual void adamw_step(const std::vector<AdamWTensor>& tensors, const AdamWParams& p) = 0;
};

}  // namespace moe
