// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::rope_forward(Tensor x, double theta) { throw std::logic_error("rope_forward not implemented"); }
void CpuOps::rope_backward(Tensor dx, double theta) { throw std::logic_error("rope_backward not implemented"); }

}  // namespace moe
