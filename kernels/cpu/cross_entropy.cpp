// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::cross_entropy_forward(Tensor losses, Tensor logits, Tensor targets) { throw std::logic_error("cross_entropy_forward not implemented"); }
void CpuOps::cross_entropy_backward(Tensor dlogits, Tensor logits, Tensor targets, double dloss) { throw std::logic_error("cross_entropy_backward not implemented"); }

}  // namespace moe
