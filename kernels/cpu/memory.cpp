// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void* CpuOps::alloc(size_t bytes) { throw std::logic_error("alloc not implemented"); }
void CpuOps::release(void* p) { throw std::logic_error("release not implemented"); }
void CpuOps::copy_from_host(Tensor dst, const void* src) { throw std::logic_error("copy_from_host not implemented"); }
void CpuOps::copy_to_host(void* dst, Tensor src) { throw std::logic_error("copy_to_host not implemented"); }
void CpuOps::zero(Tensor t) { throw std::logic_error("zero not implemented"); }
void CpuOps::copy(Tensor dst, Tensor src) { throw std::logic_error("copy not implemented"); }
void CpuOps::add(Tensor y, Tensor x, double alpha) { throw std::logic_error("add not implemented"); }
void CpuOps::scale(Tensor y, double alpha) { throw std::logic_error("scale not implemented"); }
double CpuOps::sum_squares(Tensor x) { throw std::logic_error("sum_squares not implemented"); }
double CpuOps::sum(Tensor x) { throw std::logic_error("sum not implemented"); }
void CpuOps::concat_cols_forward(Tensor out, Tensor a, Tensor b) { throw std::logic_error("concat_cols_forward not implemented"); }
void CpuOps::concat_cols_backward(Tensor da, Tensor db, Tensor dout) { throw std::logic_error("concat_cols_backward not implemented"); }

}  // namespace moe
