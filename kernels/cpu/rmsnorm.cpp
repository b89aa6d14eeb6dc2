// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::rmsnorm_forward(Tensor y, Tensor rstd, Tensor x, Tensor w, double eps) { throw std::logic_error("rmsnorm_forward not implemented"); }
void CpuOps::rmsnorm_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w, Tensor rstd) { throw std::logic_error("rmsnorm_backward not implemented"); }

}  // namespace moe
