#include "engine/moe/token_dispatcher.h"

#include <algorithm>
#include <stdexcept>

namespace moe {

TokenDispatcher::TokenDispatcher(int num_experts, int top_k, std::optional<double> capacity_factor,
                                 const GroupPlace& ep)
    : E_(num_experts), k_(top_k), capacity_factor_(capacity_factor), ep_(ep) {
    if (distributed() && E_ % ep_.size != 0)
        throw std::logic_error("token dispatcher: experts do not split evenly over the EP group");
}

void TokenDispatcher::carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, int64_t H) {
    const DType dt = pr.act;
    H_ = H;
    const int64_t slots = N * k_;
    slot_row_ = acts.take(DType::I32, {slots});
    row_token_ = acts.take(DType::I32, {slots});
    send_ = acts.take(dt, {slots, H});
    back_ = acts.take(dt, {slots, H});
    d_back_ = scratch.take(dt, {slots, H});
    d_send_ = scratch.take(dt, {slots, H});
    if (!distributed()) {  // the experts work on the routing order directly
        local_in_ = send_;
        local_out_ = back_;
        d_local_out_ = d_back_;
        d_local_in_ = d_send_;
        return;
    }
    const int64_t most = max_local_rows(N);
    local_in_ = acts.take(dt, {most, H});
    local_out_ = acts.take(dt, {most, H});
    local_index_ = acts.take(DType::I32, {most});
    source_index_ = acts.take(DType::I32, {most});
    source_in_ = scratch.take(dt, {most, H});
    source_out_ = scratch.take(dt, {most, H});
    d_local_out_ = scratch.take(dt, {most, H});
    d_local_in_ = scratch.take(dt, {most, H});
}

int64_t TokenDispatcher::max_local_rows(int64_t N) const {
    const int64_t every_slot = N * k_ * ep_.size;
    const int64_t capacity = expert_capacity(capacity_factor_, int(N), k_, E_);
    return capacity < 0 ? every_slot : std::min(every_slot, int64_t(E_) * capacity);
}

Tensor TokenDispatcher::dispatch(Ops& ops, const RouterChoice& choice, Tensor x) {
    slots_ = x.dim(0) * k_;
    if (choice.host_experts) plan_on_host(ops, *choice.host_experts, x.dim(0));
    else plan_on_device(ops, choice.experts);
    return send_rows(ops, x);
}

void TokenDispatcher::plan_on_device(Ops& ops, Tensor expert_of_slot) {
    counts_ = ops.plan_routing(slot_rows(), row_token_.rows(0, slots_), expert_of_slot, E_, capacity_factor_);
}

void TokenDispatcher::plan_on_host(Ops& ops, const std::vector<int32_t>& expert_of_slot, int64_t N) {
    RoutingPlan plan = build_routing_plan(expert_of_slot.data(), int(N), k_, E_, capacity_factor_);
    ops.copy_from_host(slot_rows(), plan.slot_row.data());
    ops.copy_from_host(row_token_.rows(0, plan.rows()), plan.row_token.data());
    counts_ = std::move(plan);
}

Tensor TokenDispatcher::send_rows(Ops& ops, Tensor x) {
    const int64_t R = counts_.rows();
    Tensor routed = send_.rows(0, R);
    ops.permute_forward(routed, x, row_token_.rows(0, R));
    if (!distributed()) {
        local_offsets_ = counts_.offsets;
        local_rows_ = R;
        return routed;
    }
    exchange_counts(ops);
    Tensor local = local_in_.rows(0, local_rows_);
    to_experts(ops, routed, local);
    return local;
}

void TokenDispatcher::exchange_counts(Ops& ops) {
    const int P = ep_.size, El = E_ / P;
    // Rows per global expert, sent to the rank that holds the expert.
    std::vector<int32_t> mine(E_), theirs(E_);
    for (int e = 0; e < E_; ++e) mine[e] = int32_t(counts_.offsets[e + 1] - counts_.offsets[e]);
    ep_.comm->all_to_all(mine.data(), theirs.data(), El, DType::I32);  // theirs[s*El + e]: rows of source s for local e

    send_rows_.assign(P, 0);
    recv_rows_.assign(P, 0);
    std::vector<int64_t> source_start(P + 1, 0);  // first row of each source in source order
    for (int p = 0; p < P; ++p) {
        for (int e = 0; e < El; ++e) {
            send_rows_[p] += mine[p * El + e];
            recv_rows_[p] += theirs[p * El + e];
        }
        source_start[p + 1] = source_start[p] + recv_rows_[p];
    }
    local_rows_ = source_start[P];
    // Local order: local expert major, then source rank, then the source's order.
    local_offsets_.assign(El + 1, 0);
    local_index_host_.resize(local_rows_);
    std::vector<int64_t> cursor(source_start.begin(), source_start.end() - 1);
    int64_t r = 0;
    for (int e = 0; e < El; ++e) {
        for (int s = 0; s < P; ++s)
            for (int32_t i = 0; i < theirs[s * El + e]; ++i) local_index_host_[r++] = int32_t(cursor[s]++);
        local_offsets_[e + 1] = r;
    }
    source_index_host_.resize(local_rows_);
    for (int64_t l = 0; l < local_rows_; ++l) source_index_host_[local_index_host_[l]] = int32_t(l);
    ops.copy_from_host(local_index_.rows(0, local_rows_), local_index_host_.data());
    ops.copy_from_host(source_index_.rows(0, local_rows_), source_index_host_.data());
}

void TokenDispatcher::to_experts(Ops& ops, Tensor routing_rows, Tensor local_rows) {
    const int P = ep_.size;
    std::vector<int64_t> send(P), recv(P);
    for (int p = 0; p < P; ++p) {
        send[p] = send_rows_[p] * H_;
        recv[p] = recv_rows_[p] * H_;
    }
    Tensor source = source_in_.rows(0, local_rows_);
    ep_.comm->all_to_all_v(routing_rows.data, send, source.data, recv, routing_rows.dtype);
    ops.permute_forward(local_rows, source, local_index_.rows(0, local_rows_));
}

void TokenDispatcher::from_experts(Ops& ops, Tensor local_rows, Tensor routing_rows) {
    const int P = ep_.size;
    Tensor source = source_out_.rows(0, local_rows_);
    ops.permute_forward(source, local_rows, source_index_.rows(0, local_rows_));
    std::vector<int64_t> send(P), recv(P);
    for (int p = 0; p < P; ++p) {
        send[p] = recv_rows_[p] * H_;
        recv[p] = send_rows_[p] * H_;
    }
    ep_.comm->all_to_all_v(source.data, send, routing_rows.data, recv, routing_rows.dtype);
}

void TokenDispatcher::combine(Ops& ops, Tensor w, Tensor y, Write y_write) {
    const int64_t R = counts_.rows();
    Tensor back = back_.rows(0, R);
    if (distributed()) from_experts(ops, expert_output(), back);
    ops.combine_forward(y, back, w, slot_rows(), y_write);
}

Tensor TokenDispatcher::combine_backward(Ops& ops, Tensor dy, Tensor w, Tensor dw) {
    const int64_t R = counts_.rows();
    Tensor d_back = d_back_.rows(0, R);
    ops.combine_backward(d_back, dw, dy, back_.rows(0, R), w, slot_rows(), Write::overwrite);
    if (!distributed()) return d_back;
    Tensor d_local = d_local_out_.rows(0, local_rows_);
    to_experts(ops, d_back, d_local);
    return d_local;
}

void TokenDispatcher::dispatch_backward(Ops& ops, Tensor dxl, Tensor dx) {
    const int64_t R = counts_.rows();
    Tensor d_routed = dxl;
    if (distributed()) {
        d_routed = d_send_.rows(0, R);
        from_experts(ops, dxl, d_routed);
    }
    ops.permute_backward(dx, d_routed, slot_rows(), Write::overwrite);
}

}  // namespace moe
