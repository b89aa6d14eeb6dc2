// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::matmul_forward(Tensor y, Tensor x, Tensor w, Tensor b) { throw std::logic_error("matmul_forward not implemented"); }
void CpuOps::matmul_backward(Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) { throw std::logic_error("matmul_backward not implemented"); }
void CpuOps::grouped_matmul_forward(Tensor y, Tensor x, Tensor w, const std::vector<int64_t>& offsets) { throw std::logic_error("grouped_matmul_forward not implemented"); }
void CpuOps::grouped_matmul_backward(Tensor dx, Tensor dw, Tensor dy, Tensor x, Tensor w,
                                 const std::vector<int64_t>& offsets) { throw std::logic_error("grouped_matmul_backward not implemented"); }

}  // namespace moe
