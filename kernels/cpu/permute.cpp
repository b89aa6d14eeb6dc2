// MoE permutation between token order and expert-sorted rows, driven by the
// index arrays of a RoutingPlan (kernels/routing_plan.h; plan_routing builds
// one from routing held in a tensor): permute gathers token rows into expert
// order, combine sums the weighted expert outputs back into tokens. Dropped
// slots (slot_row < 0) add nothing and get no gradient.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/check.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

namespace {

// Every entry of idx lies in [lo, hi): a bad plan fails here, not as a stray write.
void check_indices(const char* op, const char* name, Tensor idx, int64_t lo, int64_t hi) {
    const int32_t* p = idx.ptr<int32_t>();
    for (int64_t i = 0; i < idx.numel(); ++i)
        if (p[i] < lo || p[i] >= hi)
            throw std::out_of_range(std::string(op) + ": " + name + "[" + std::to_string(i) + "] = " +
                                    std::to_string(p[i]) + " is outside [" + std::to_string(lo) + ", " +
                                    std::to_string(hi) + "); the routing plan does not fit these tensors");
}

void check_rows(const char* op, Tensor a, const char* a_name, Tensor b, const char* b_name, int64_t a_rows,
                int64_t b_rows) {
    if (a.ndim != 2 || b.ndim != 2 || a.dim(0) != a_rows || b.dim(0) != b_rows || a.dim(1) != b.dim(1))
        throw std::invalid_argument(std::string(op) + ": expected " + a_name + " [" + std::to_string(a_rows) +
                                    ",H] and " + b_name + " [" + std::to_string(b_rows) + ",H]; got " +
                                    a.shape_str() + " and " + b.shape_str());
}

// The slots of a combine: y/dy [N,H], ye/dye [R,H], w [N,k], slot_row [N*k].
void check_combine(const char* op, Tensor y, Tensor ye, Tensor w, Tensor slot_row) {
    check_rows(op, y, "y", ye, "ye", y.dim(0), ye.dim(0));
    if (w.ndim != 2 || w.dim(0) != y.dim(0) || slot_row.numel() != w.numel())
        throw std::invalid_argument(std::string(op) + ": expected w [N,k] and slot_row [N*k] for N = " +
                                    std::to_string(y.dim(0)) + "; got " + w.shape_str() + " and " +
                                    slot_row.shape_str());
    check_indices(op, "slot_row", slot_row, -1, ye.dim(0));
}

// out[t] = residual[t] + out[t] (rounded as add_tensors rounds), where a residual is given.
template <class T> void add_residual(T* out, const Tensor& residual, int64_t t, int64_t H) {
    if (residual.empty()) return;
    const T* r = residual.ptr<T>() + t * H;
    for (int64_t c = 0; c < H; ++c) out[c] = r[c] + out[c];
}

}  // namespace

RoutingCounts CpuOps::plan_routing(Tensor slot_row, Tensor row_token, Tensor expert_of_slot, int num_experts,
                                   std::optional<double> capacity_factor) {
    const int64_t N = expert_of_slot.dim(0), k = expert_of_slot.dim(1);
    if (expert_of_slot.ndim != 2 || expert_of_slot.dtype != DType::I32 || slot_row.dtype != DType::I32 ||
        row_token.dtype != DType::I32 || slot_row.numel() != N * k || row_token.numel() != N * k)
        throw std::invalid_argument("plan_routing: expected I32 expert_of_slot [N,k], slot_row and row_token [N*k]; "
                                    "got " + expert_of_slot.shape_str() + ", " + slot_row.shape_str() + " and " +
                                    row_token.shape_str());
    RoutingPlan plan = build_routing_plan(expert_of_slot.ptr<int32_t>(), int(N), int(k), num_experts,
                                          capacity_factor);
    std::copy(plan.slot_row.begin(), plan.slot_row.end(), slot_row.ptr<int32_t>());
    std::copy(plan.row_token.begin(), plan.row_token.end(), row_token.ptr<int32_t>());
    return std::move(plan);  // its counts
}

void CpuOps::permute_forward(Tensor xe, Tensor x, Tensor row_token) {
    const int64_t R = row_token.numel();
    check_rows("permute_forward", xe, "xe", x, "x", R, x.dim(0));
    check_indices("permute_forward", "row_token", row_token, 0, x.dim(0));
    const int64_t H = x.dim(1);
    dispatch_float(x, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* src = x.ptr<T>();
        T* dst = xe.ptr<T>();
        const int32_t* token = row_token.ptr<int32_t>();
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < R; ++r) std::copy_n(src + token[r] * H, H, dst + r * H);
    });
}

void CpuOps::permute_backward(Tensor dx, Tensor dxe, Tensor slot_row, Write dx_write, Tensor residual) {
    if (dx.empty()) return;
    if (!residual.empty()) check_same_shape("permute_backward", residual, dx);
    const int64_t N = dx.dim(0);
    if (dx.ndim != 2 || dxe.ndim != 2 || dxe.dim(1) != dx.dim(1) || N == 0 || slot_row.numel() % N != 0)
        throw std::invalid_argument("permute_backward: expected dx [N,H], dxe [R,H] and slot_row [N*k]; got " +
                                    dx.shape_str() + ", " + dxe.shape_str() + " and " + slot_row.shape_str());
    check_indices("permute_backward", "slot_row", slot_row, -1, dxe.dim(0));
    if (dx_write == Write::overwrite) zero(dx);
    const int64_t H = dx.dim(1), k = slot_row.numel() / N;
    dispatch_float(dx, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* src = dxe.ptr<T>();
        T* dst = dx.ptr<T>();
        const int32_t* slot = slot_row.ptr<int32_t>();
        // Each token gathers its own slots: threads never share a dx row.
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < N; ++t) {
            T* d = dst + t * H;
            for (int64_t j = 0; j < k; ++j) {
                const int32_t r = slot[t * k + j];
                if (r < 0) continue;
                const T* s = src + int64_t(r) * H;
                for (int64_t c = 0; c < H; ++c) d[c] += s[c];
            }
            add_residual(d, residual, t, H);
        }
    });
}

void CpuOps::combine_forward(Tensor y, Tensor ye, Tensor w, Tensor slot_row, Write y_write, Tensor residual) {
    check_combine("combine_forward", y, ye, w, slot_row);
    if (!residual.empty()) check_same_shape("combine_forward", residual, y);
    if (y_write == Write::overwrite) zero(y);
    const int64_t N = y.dim(0), H = y.dim(1), k = w.dim(1);
    dispatch_float(y, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* rows = ye.ptr<T>();
        const T* wt = w.ptr<T>();
        const int32_t* slot = slot_row.ptr<int32_t>();
        T* out = y.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < N; ++t) {
            T* yt = out + t * H;
            for (int64_t j = 0; j < k; ++j) {
                const int32_t r = slot[t * k + j];
                if (r < 0) continue;
                const T wj = wt[t * k + j];
                const T* src = rows + int64_t(r) * H;
                for (int64_t c = 0; c < H; ++c) yt[c] += wj * src[c];
            }
            add_residual(yt, residual, t, H);
        }
    });
}

void CpuOps::combine_backward(Tensor dye, Tensor dw, Tensor dy, Tensor ye, Tensor w, Tensor slot_row,
                              Write dye_write) {
    check_combine("combine_backward", dy, ye, w, slot_row);
    if (!dye.empty() && dye.numel() != ye.numel())
        throw std::invalid_argument("combine_backward: dye " + dye.shape_str() + " must have the shape of ye " +
                                    ye.shape_str());
    if (!dw.empty() && dw.numel() != w.numel())
        throw std::invalid_argument("combine_backward: dw " + dw.shape_str() + " must have the shape of w " +
                                    w.shape_str());
    if (dye_write == Write::overwrite && !dye.empty()) zero(dye);
    const int64_t N = dy.dim(0), H = dy.dim(1), k = w.dim(1);
    dispatch_float(dy, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T* g = dy.ptr<T>();
        const T* rows = ye.ptr<T>();
        const T* wt = w.ptr<T>();
        const int32_t* slot = slot_row.ptr<int32_t>();
        T* drows = dye.empty() ? nullptr : dye.ptr<T>();
        T* dwt = dw.empty() ? nullptr : dw.ptr<T>();
        // Each kept row belongs to exactly one slot, so tokens split over threads.
#pragma omp parallel for schedule(static)
        for (int64_t t = 0; t < N; ++t) {
            const T* gt = g + t * H;
            for (int64_t j = 0; j < k; ++j) {
                const int32_t r = slot[t * k + j];
                if (r < 0) continue;
                if (drows) {
                    const T wj = wt[t * k + j];
                    T* d = drows + int64_t(r) * H;
                    for (int64_t c = 0; c < H; ++c) d[c] += wj * gt[c];
                }
                if (dwt) {
                    const T* src = rows + int64_t(r) * H;
                    double dot = 0;
                    for (int64_t c = 0; c < H; ++c) dot += double(gt[c]) * src[c];
                    dwt[t * k + j] += T(dot);
                }
            }
        }
    });
}

}  // namespace moe
