// The CPU reference backend: plain loops over F32 (training) or F64 (gradient
// checks) tensors, each op family in its own file beside this one. Loops that
// split work over threads (OpenMP) give every output element to one thread
// and sum in a fixed order, so results do not depend on the thread count.
// Tests derive from it to stand in for a device (a small memory, say).
#pragma once
#include "kernels/ops.h"

namespace moe {

class CpuOps : public Ops {
public:
    Device device() const override { return Device::CPU; }
    std::string device_name() const override { return "cpu"; }
    Precision training_precision() const override { return Precision(DType::F32); }

    void* alloc(size_t bytes) override;
    size_t memory_available() const override;
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
};

}  // namespace moe
