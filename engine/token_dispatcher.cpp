#include "engine/token_dispatcher.h"

namespace moe {

void TokenDispatcher::carve(Arena& acts, int64_t N) {
    slot_row_ = acts.take(DType::I32, {N * k_});
    row_token_ = acts.take(DType::I32, {N * k_});
}

Tensor TokenDispatcher::dispatch(Ops& ops, const std::vector<int32_t>& expert_of_slot, Tensor x, Tensor xe) {
    const int N = int(x.dim(0));
    plan_ = build_routing_plan(expert_of_slot.data(), N, k_, E_, capacity_factor_);
    const int64_t R = plan_.rows();
    ops.copy_from_host(slot_row_, plan_.slot_row.data());
    Tensor row_token = row_token_.rows(0, R);
    if (R > 0) ops.copy_from_host(row_token, plan_.row_token.data());
    Tensor rows = xe.rows(0, R);
    ops.permute_forward(rows, x, row_token);
    return rows;
}

void TokenDispatcher::combine(Ops& ops, Tensor ye, Tensor w, Tensor y) {
    ops.zero(y);
    ops.combine_forward(y, ye, w, slot_row_);
}

void TokenDispatcher::combine_backward(Ops& ops, Tensor dy, Tensor ye, Tensor w, Tensor dye, Tensor dw) {
    ops.combine_backward(dye, dw, dy, ye, w, slot_row_);
}

void TokenDispatcher::dispatch_backward(Ops& ops, Tensor dxe, Tensor dx) {
    ops.permute_backward(dx, dxe, row_token_.rows(0, plan_.rows()));
}

}  // namespace moe
