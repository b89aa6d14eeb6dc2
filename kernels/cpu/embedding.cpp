// Token embedding: a row gather, and its scatter-add backward.
#include <cstring>
#include <type_traits>

#include "kernels/cpu/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

void CpuOps::embedding_forward(Tensor out, Tensor ids, Tensor table) {
    const int64_t N = ids.numel(), H = table.dim(1);
    check(out.dim(0) == N && out.row_size() == H, "embedding_forward",
          "out " + out.shape_str() + " for " + std::to_string(N) + " ids of table " + table.shape_str());
    const int32_t* id = ids.ptr<int32_t>();
    dispatch_float(table, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* w = table.ptr<T>();
        T* o = out.ptr<T>();
        for (int64_t n = 0; n < N; ++n) std::memcpy(o + n * H, w + int64_t(id[n]) * H, H * sizeof(T));
    });
}

void CpuOps::embedding_backward(Tensor dtable, Tensor ids, Tensor dout) {
    const int64_t N = ids.numel(), H = dtable.dim(1);
    const int32_t* id = ids.ptr<int32_t>();
    dispatch_float(dtable, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* dw = dtable.ptr<T>();
        const T* d = dout.ptr<T>();
        // Token order for every column: repeated ids sum in a fixed order.
        for (int64_t n = 0; n < N; ++n) {
            T* row = dw + int64_t(id[n]) * H;
            for (int64_t i = 0; i < H; ++i) row[i] += d[n * H + i];
        }
    });
}

}  // namespace moe
