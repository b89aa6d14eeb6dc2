// TEMPORARY scaffold: replaced by the real implementation.
#include <stdexcept>
#include "kernels/cpu/cpu_ops.h"

namespace moe {

void CpuOps::embedding_forward(Tensor out, Tensor ids, Tensor table) { throw std::logic_error("embedding_forward not implemented"); }
void CpuOps::embedding_backward(Tensor dtable, Tensor ids, Tensor dout) { throw std::logic_error("embedding_backward not implemented"); }

}  // namespace moe
