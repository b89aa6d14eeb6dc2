// Token embedding: a row gather, and its scatter-add backward.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/parallel.h"

namespace moe {

namespace {

// table [V,H], rows [N,H] for N = ids.numel(), every id in [0, V): a bad id
// would read or write outside the table, so it stops here.
void check_lookup(const char* op, const Tensor& rows, const Tensor& ids, const Tensor& table) {
    check(table.ndim == 2 && rows.dim(0) == ids.numel() && rows.row_size() == table.dim(1), op,
          "expected table [V,H] and rows [N,H] for N = " + std::to_string(ids.numel()) + " ids; got table " +
              table.shape_str() + " and rows " + rows.shape_str());
    const int32_t* id = ids.ptr<int32_t>();
    for (int64_t n = 0; n < ids.numel(); ++n)
        if (id[n] < 0 || id[n] >= table.dim(0))
            throw std::out_of_range(std::string(op) + ": id[" + std::to_string(n) + "] = " + std::to_string(id[n]) +
                                    " is outside the table's " + std::to_string(table.dim(0)) + " rows");
}

}  // namespace

void CpuOps::embedding_forward(Tensor out, Tensor ids, Tensor table) {
    check_lookup("embedding_forward", out, ids, table);
    const int64_t N = ids.numel(), H = table.dim(1);
    const int32_t* id = ids.ptr<int32_t>();
    dispatch_float(table, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* w = table.ptr<T>();
        T* o = out.ptr<T>();
#pragma omp parallel for schedule(static) if (worth_threads(N * H))
        for (int64_t n = 0; n < N; ++n) std::copy_n(w + int64_t(id[n]) * H, H, o + n * H);
    });
}

void CpuOps::embedding_backward(Tensor dtable, Tensor ids, Tensor dout, Write dw_write) {
    if (dtable.empty()) return;
    check_lookup("embedding_backward", dout, ids, dtable);
    if (dw_write == Write::overwrite) zero(dtable);
    const int64_t N = ids.numel(), H = dtable.dim(1);
    const int32_t* id = ids.ptr<int32_t>();
    dispatch_float(dtable, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        T* dw = dtable.ptr<T>();
        const T* d = dout.ptr<T>();
        // Serial in token order: repeated ids sum in a fixed order (N*H adds, cheap).
        for (int64_t n = 0; n < N; ++n) {
            T* row = dw + int64_t(id[n]) * H;
            const T* dn = d + n * H;
#pragma omp simd
            for (int64_t i = 0; i < H; ++i) row[i] += dn[i];
        }
    });
}

}  // namespace moe
