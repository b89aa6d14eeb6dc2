// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::adamw_step(Tensor param, Tensor grad, Tensor m, Tensor v, const AdamWParams& p) { throw std::logic_error("adamw_step not implemented"); }

}  // namespace moe
