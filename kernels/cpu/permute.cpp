// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::permute_forward(Tensor xe, Tensor x, Tensor row_token) { throw std::logic_error("permute_forward not implemented"); }
void CpuOps::permute_backward(Tensor dx, Tensor dxe, Tensor row_token) { throw std::logic_error("permute_backward not implemented"); }
void CpuOps::combine_forward(Tensor y, Tensor ye, Tensor w, Tensor slot_row) { throw std::logic_error("combine_forward not implemented"); }
void CpuOps::combine_backward(Tensor dye, Tensor dw, Tensor dy, Tensor ye, Tensor w, Tensor slot_row) { throw std::logic_error("combine_backward not implemented"); }

}  // namespace moe
