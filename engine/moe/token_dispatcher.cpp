#include "engine/moe/token_dispatcher.h"

#include <algorithm>
#include <stdexcept>
#include <string>

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
    // One rank: the rows the experts work on, kept for the backward.
    // Distributed: packed rows, needed only while they move.
    Arena& rows = distributed() ? scratch : acts;
    send_ = rows.take(dt, {slots, H});
    back_ = rows.take(dt, {slots, H});
    d_back_ = scratch.take(dt, {slots, H});
    d_send_ = scratch.take(dt, {slots, H});
    if (!distributed()) {  // the experts work on the routing order directly
        local_in_ = send_;
        local_out_ = back_;
        d_local_out_ = d_back_;
        d_local_in_ = d_send_;
        return;
    }
    // Packed rows are at most the routed rows (out) or the local rows (in).
    const int64_t most = max_local_rows(N);
    columns_ = std::min(k_, E_ / ep_.size);
    local_in_ = acts.take(dt, {most, H});
    local_out_ = acts.take(dt, {most, H});
    packed_token_ = acts.take(DType::I32, {slots});
    token_packed_ = acts.take(DType::I32, {N * ep_.size});
    row_slot_ = acts.take(DType::I32, {slots});
    local_index_ = acts.take(DType::I32, {most});
    packed_source_ = acts.take(DType::I32, {most * columns_});
    packed_local_ = acts.take(DType::I32, {most * columns_});
    source_position_ = acts.take(DType::I32, {most});
    packed_weights_ = acts.take(pr.stat, {most * columns_, 1});
    weights_out_ = scratch.take(pr.stat, {slots, 1});
    dweights_back_ = scratch.take(pr.stat, {slots, 1});
    weights_in_ = scratch.take(pr.stat, {most, 1});
    dweights_in_ = scratch.take(pr.stat, {most, 1});
    packed_dweights_ = scratch.take(pr.stat, {most * columns_, 1});
    packed_rows_ = scratch.take(dt, {most, H});
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
    weights_ = choice.weights;
    if (choice.host_experts) plan_on_host(ops, *choice.host_experts, x.dim(0));
    else plan_on_device(ops, choice.experts);
    if (!distributed()) {
        const int64_t R = counts_.rows();
        Tensor routed = send_.rows(0, R);
        ops.permute_forward(routed, x, row_token_.rows(0, R));
        local_offsets_ = counts_.offsets;
        local_rows_ = R;
        return routed;
    }
    plan_exchange(ops);
    // x's packed rows and the routed rows' weights out; the weights laid out
    // as the packed rows' slots (0 past a row's own), the local rows gathered
    // from the packed rows that came in.
    Tensor packed = send_.rows(0, packed_out_rows_);
    ops.permute_forward(packed, x, packed_token_.rows(0, packed_out_rows_));
    Tensor weights = weights_out_.rows(0, counts_.rows());
    ops.permute_forward(weights, weights_.view({slots_, 1}), row_slot_.rows(0, counts_.rows()));
    Tensor packed_in = packed_rows_.rows(0, packed_in_rows_);
    Tensor weights_in = weights_in_.rows(0, local_rows_);
    exchange(packed, packed_out_, packed_in, packed_in_);
    exchange(weights, send_rows_, weights_in, recv_rows_);
    if (packed_in_rows_ > 0)
        ops.permute_backward(packed_weights_.rows(0, packed_in_rows_ * columns_), weights_in,
                             packed_source_.rows(0, packed_in_rows_ * columns_), Write::overwrite, {});
    Tensor local = local_in_.rows(0, local_rows_);
    ops.permute_forward(local, packed_in, local_index_.rows(0, local_rows_));
    return local;
}

void TokenDispatcher::plan_on_device(Ops& ops, Tensor expert_of_slot) {
    counts_ = ops.plan_routing(slot_rows(), row_token_.rows(0, slots_), expert_of_slot, E_, capacity_factor_);
    if (distributed()) {
        slot_row_host_.resize(size_t(slots_));
        ops.copy_to_host(slot_row_host_.data(), slot_rows());
    }
}

void TokenDispatcher::plan_on_host(Ops& ops, const std::vector<int32_t>& expert_of_slot, int64_t N) {
    RoutingPlan plan = build_routing_plan(expert_of_slot.data(), int(N), k_, E_, capacity_factor_);
    ops.copy_from_host(slot_rows(), plan.slot_row.data());
    ops.copy_from_host(row_token_.rows(0, plan.rows()), plan.row_token.data());
    if (distributed()) slot_row_host_ = plan.slot_row;
    counts_ = std::move(plan);
}

void TokenDispatcher::plan_exchange(Ops& ops) {
    const PackedOrder out = plan_packed_order();
    const Arrivals in = tell_ranks(out.row_packed);
    const LocalOrder local = plan_local_order(in);
    const int64_t R = counts_.rows(), N = slots_ / k_;
    ops.copy_from_host(row_slot_.rows(0, R), out.row_slot.data());
    ops.copy_from_host(packed_token_.rows(0, packed_out_rows_), out.packed_token.data());
    ops.copy_from_host(token_packed_.rows(0, N * ep_.size), out.token_packed.data());
    ops.copy_from_host(local_index_.rows(0, local_rows_), local.local_packed.data());
    ops.copy_from_host(packed_source_.rows(0, packed_in_rows_ * columns_), local.packed_source.data());
    ops.copy_from_host(packed_local_.rows(0, packed_in_rows_ * columns_), local.packed_local.data());
    ops.copy_from_host(source_position_.rows(0, local_rows_), local.source_position.data());
}

TokenDispatcher::PackedOrder TokenDispatcher::plan_packed_order() {
    const int P = ep_.size, El = E_ / P;
    const int64_t N = slots_ / k_, R = counts_.rows();
    PackedOrder o;
    // Each routing row's slot; the (rank, token) pairs of kept slots.
    o.row_slot.resize(static_cast<size_t>(R));
    for (int64_t s = 0; s < slots_; ++s)
        if (slot_row_host_[size_t(s)] >= 0) o.row_slot[size_t(slot_row_host_[size_t(s)])] = int32_t(s);
    o.token_packed.assign(static_cast<size_t>(N * P), -1);
    for (int e = 0; e < E_; ++e)
        for (int64_t r = counts_.offsets[e]; r < counts_.offsets[e + 1]; ++r)
            o.token_packed[size_t(o.row_slot[size_t(r)] / k_ * P + e / El)] = 0;  // a pair that is sent
    // Those pairs numbered by rank, then token.
    packed_out_.assign(P, 0);
    std::vector<int64_t> packed_start(P + 1, 0);  // each rank's first packed row
    for (int p = 0; p < P; ++p) {
        for (int64_t t = 0; t < N; ++t) {
            int32_t& g = o.token_packed[size_t(t * P + p)];
            if (g < 0) continue;
            g = int32_t(o.packed_token.size());
            o.packed_token.push_back(int32_t(t));
        }
        packed_start[p + 1] = int64_t(o.packed_token.size());
        packed_out_[p] = packed_start[p + 1] - packed_start[p];
    }
    packed_out_rows_ = packed_start[P];
    // Each routing row's packed row within its rank's block: what the rank reads it from.
    o.row_packed.resize(static_cast<size_t>(R));
    for (int e = 0; e < E_; ++e)
        for (int64_t r = counts_.offsets[e]; r < counts_.offsets[e + 1]; ++r)
            o.row_packed[size_t(r)] = int32_t(o.token_packed[size_t(o.row_slot[size_t(r)] / k_ * P + e / El)] -
                                              packed_start[e / El]);
    return o;
}

TokenDispatcher::Arrivals TokenDispatcher::tell_ranks(const std::vector<int32_t>& row_packed) {
    const int P = ep_.size, El = E_ / P;
    // To each rank: the routed rows of each of its experts, and the packed rows.
    std::vector<int32_t> mine(size_t(P) * (El + 1)), theirs(size_t(P) * (El + 1));
    for (int p = 0; p < P; ++p) {
        for (int e = 0; e < El; ++e)
            mine[size_t(p * (El + 1) + e)] = int32_t(counts_.offsets[p * El + e + 1] - counts_.offsets[p * El + e]);
        mine[size_t(p * (El + 1) + El)] = int32_t(packed_out_[p]);
    }
    ep_.comm->all_to_all(mine.data(), theirs.data(), El + 1, DType::I32);
    Arrivals in;
    in.rows_from.resize(size_t(P) * El);
    send_rows_.assign(P, 0);
    recv_rows_.assign(P, 0);
    packed_in_.assign(P, 0);
    in.source_start.assign(P + 1, 0);
    in.packed_in_start.assign(P + 1, 0);
    for (int p = 0; p < P; ++p) {
        for (int e = 0; e < El; ++e) {
            in.rows_from[size_t(p * El + e)] = theirs[size_t(p * (El + 1) + e)];
            send_rows_[p] += mine[size_t(p * (El + 1) + e)];
            recv_rows_[p] += theirs[size_t(p * (El + 1) + e)];
        }
        packed_in_[p] = theirs[size_t(p * (El + 1) + El)];
        in.source_start[p + 1] = in.source_start[p] + recv_rows_[p];
        in.packed_in_start[p + 1] = in.packed_in_start[p] + packed_in_[p];
    }
    local_rows_ = in.source_start[P];
    packed_in_rows_ = in.packed_in_start[P];
    // Which packed row each routed row that comes reads: numbered in packed
    // source order.
    in.source_packed.resize(static_cast<size_t>(local_rows_));
    ep_.comm->all_to_all_v(row_packed.data(), send_rows_, in.source_packed.data(), recv_rows_, DType::I32);
    for (int s = 0; s < P; ++s)
        for (int64_t i = in.source_start[s]; i < in.source_start[s + 1]; ++i) {
            int32_t& g = in.source_packed[size_t(i)];
            if (g < 0 || g >= packed_in_[s])
                throw std::logic_error("token dispatcher: rank " + std::to_string(s) + " sent routed row " +
                                       std::to_string(i - in.source_start[s]) + " of packed row " +
                                       std::to_string(g) + " of " + std::to_string(packed_in_[s]));
            g += int32_t(in.packed_in_start[s]);
        }
    return in;
}

TokenDispatcher::LocalOrder TokenDispatcher::plan_local_order(const Arrivals& in) {
    const int P = ep_.size, El = E_ / P;
    // Local order: local expert major, then source rank, then the source's order.
    local_offsets_.assign(El + 1, 0);
    std::vector<int32_t> local_source(static_cast<size_t>(local_rows_));
    std::vector<int64_t> cursor(in.source_start.begin(), in.source_start.end() - 1);
    int64_t r = 0;
    for (int e = 0; e < El; ++e) {
        for (int s = 0; s < P; ++s)
            for (int64_t i = 0; i < in.rows_from[size_t(s * El + e)]; ++i)
                local_source[size_t(r++)] = int32_t(cursor[s]++);
        local_offsets_[e + 1] = r;
    }
    LocalOrder o;
    std::vector<int32_t> source_local(static_cast<size_t>(local_rows_));
    o.local_packed.resize(local_source.size());
    for (int64_t l = 0; l < local_rows_; ++l) {
        source_local[size_t(local_source[size_t(l)])] = int32_t(l);
        o.local_packed[size_t(l)] = in.source_packed[size_t(local_source[size_t(l)])];
    }
    // Each packed row's slots: its routed rows in source order (so by local
    // expert), as source rows and as local rows, -1 past them; and each
    // source row's slot.
    o.packed_source.assign(static_cast<size_t>(packed_in_rows_ * columns_), -1);
    o.packed_local.assign(o.packed_source.size(), -1);
    o.source_position.resize(static_cast<size_t>(local_rows_));
    std::vector<int> filled(static_cast<size_t>(packed_in_rows_), 0);
    for (int64_t i = 0; i < local_rows_; ++i) {
        const int32_t g = in.source_packed[size_t(i)];
        const int c = filled[size_t(g)]++;
        if (c >= columns_)
            throw std::logic_error("token dispatcher: packed row " + std::to_string(g) + " has more than " +
                                   std::to_string(columns_) + " routed rows");
        const size_t q = size_t(g) * size_t(columns_) + size_t(c);
        o.packed_source[q] = int32_t(i);
        o.packed_local[q] = source_local[size_t(i)];
        o.source_position[size_t(i)] = int32_t(q);
    }
    return o;
}

void TokenDispatcher::exchange(Tensor send, const std::vector<int64_t>& send_rows, Tensor recv,
                               const std::vector<int64_t>& recv_rows) const {
    const int64_t width = send.row_size();
    std::vector<int64_t> send_counts(send_rows.size()), recv_counts(recv_rows.size());
    for (size_t p = 0; p < send_rows.size(); ++p) {
        send_counts[p] = send_rows[p] * width;
        recv_counts[p] = recv_rows[p] * width;
    }
    ep_.comm->all_to_all_v(send.data, send_counts, recv.data, recv_counts, send.dtype);
}

Tensor TokenDispatcher::packed_weights() const {
    return packed_weights_.rows(0, packed_in_rows_ * columns_).view({packed_in_rows_, columns_});
}

void TokenDispatcher::combine(Ops& ops, Tensor y, Write y_write, Tensor residual) {
    if (!distributed()) {
        ops.combine_forward(y, back_.rows(0, counts_.rows()), weights_, slot_rows(), y_write, residual);
        return;
    }
    // The weighted sum of each packed row's outputs back; each token's rows summed.
    Tensor packed = packed_rows_.rows(0, packed_in_rows_);
    ops.combine_forward(packed, expert_output(), packed_weights(),
                        packed_local_.rows(0, packed_in_rows_ * columns_), Write::overwrite, {});
    Tensor back = back_.rows(0, packed_out_rows_);
    exchange(packed, packed_in_, back, packed_out_);
    ops.permute_backward(y, back, token_packed_.rows(0, y.dim(0) * ep_.size), y_write, residual);
}

Tensor TokenDispatcher::combine_backward(Ops& ops, Tensor dy, Tensor dw) {
    const int64_t R = counts_.rows();
    if (!distributed()) {
        Tensor d_back = d_back_.rows(0, R);
        ops.combine_backward(d_back, dw, dy, back_.rows(0, R), weights_, slot_rows(), Write::overwrite);
        return d_back;
    }
    // dy's packed rows to the expert ranks: each local row's gradient, and
    // each slot's weight's, which go back to the slots they weigh.
    Tensor out = d_send_.rows(0, packed_out_rows_);
    ops.permute_forward(out, dy, packed_token_.rows(0, packed_out_rows_));
    Tensor in = packed_rows_.rows(0, packed_in_rows_);
    exchange(out, packed_out_, in, packed_in_);
    Tensor d_local = d_local_out_.rows(0, local_rows_);
    Tensor dw_packed = dw.empty() ? Tensor{} : packed_dweights_.rows(0, packed_in_rows_ * columns_);
    if (!dw.empty()) ops.zero(dw_packed);
    ops.combine_backward(d_local, dw_packed, in, expert_output(), packed_weights(),
                         packed_local_.rows(0, packed_in_rows_ * columns_), Write::overwrite);
    if (!dw.empty()) {
        Tensor dw_source = dweights_in_.rows(0, local_rows_);
        ops.permute_forward(dw_source, dw_packed, source_position_.rows(0, local_rows_));
        Tensor dw_routed = dweights_back_.rows(0, R);
        exchange(dw_source, recv_rows_, dw_routed, send_rows_);
        ops.permute_backward(dw.view({slots_, 1}), dw_routed, slot_rows(), Write::add, {});
    }
    return d_local;
}

void TokenDispatcher::dispatch_backward(Ops& ops, Tensor dxl, Tensor dx) {
    if (!distributed()) {
        ops.permute_backward(dx, dxl, slot_rows(), Write::overwrite, {});
        return;
    }
    // The experts' input gradient summed per packed row, back, summed per token.
    Tensor packed = packed_rows_.rows(0, packed_in_rows_);
    if (packed_in_rows_ > 0)
        ops.permute_backward(packed, dxl, packed_local_.rows(0, packed_in_rows_ * columns_), Write::overwrite,
                             {});
    Tensor back = d_back_.rows(0, packed_out_rows_);
    exchange(packed, packed_in_, back, packed_out_);
    ops.permute_backward(dx, back, token_packed_.rows(0, dx.dim(0) * ep_.size), Write::overwrite, {});
}

}  // namespace moe
