// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::silu_forward(Tensor y, Tensor x) { throw std::logic_error("silu_forward not implemented"); }
void CpuOps::silu_backward(Tensor dx, Tensor dy, Tensor x) { throw std::logic_error("silu_backward not implemented"); }
void CpuOps::swiglu_forward(Tensor out, Tensor gate, Tensor up) { throw std::logic_error("swiglu_forward not implemented"); }
void CpuOps::swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) { throw std::logic_error("swiglu_backward not implemented"); }

}  // namespace moe
