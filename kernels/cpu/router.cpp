// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::router_forward(Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w, Tensor logits,
                        bool normalize) { throw std::logic_error("router_forward not implemented"); }
void CpuOps::router_backward(Tensor dlogits, Tensor dtopk_w, Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w,
                         bool normalize, const std::vector<double>& aux_coef, double z_coef) { throw std::logic_error("router_backward not implemented"); }
void CpuOps::router_stats(std::vector<double>& prob_sums, double& lse_sq_sum, Tensor probs, Tensor lse) { throw std::logic_error("router_stats not implemented"); }

}  // namespace moe
