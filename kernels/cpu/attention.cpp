// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v) { throw std::logic_error("attention_forward not implemented"); }
void CpuOps::attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                            Tensor lse) { throw std::logic_error("attention_backward not implemented"); }

}  // namespace moe
