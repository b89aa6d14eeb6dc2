// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::dynamics_forward(Tensor h_out, Tensor v_out, Tensor h, Tensor v, Tensor ctrl, Tensor mu,
                          const DynamicsParams& p) { throw std::logic_error("dynamics_forward not implemented"); }
void CpuOps::dynamics_backward(Tensor dh, Tensor dv, Tensor dctrl, Tensor dmu, Tensor dh_out, Tensor dv_out, Tensor h,
                           Tensor v, Tensor ctrl, Tensor mu, const DynamicsParams& p) { throw std::logic_error("dynamics_backward not implemented"); }

}  // namespace moe
