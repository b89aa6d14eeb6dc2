// Moves token vectors to their experts and back (Megatron's token
// dispatcher). It plans the routing, permutes rows into expert order
// and, with expert parallelism, sends each rank the rows of its experts by an
// all-to-all-v and brings the outputs back the same way; then it combines the
// outputs weighted by the router. The backward replays the same plan.
//
// Row orders: "routing order" is this rank's rows sorted by global expert (so
// by destination rank); "local order" is the rows this rank's experts process,
// sorted by local expert, then by source rank.
#pragma once
#include <optional>
#include <vector>

#include "comm/communicator.h"
#include "comm/group_place.h"
#include "engine/params/arena.h"
#include "engine/moe/router.h"
#include "kernels/ops.h"
#include "kernels/routing_plan.h"

namespace moe {

class TokenDispatcher {
public:
    // ep: the expert-parallel group (of one when every expert is local).
    TokenDispatcher(int num_experts, int top_k, std::optional<double> capacity_factor, const GroupPlace& ep);
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, int64_t H);
    // The most rows this rank's experts can get in a micro-batch of N tokens:
    // every slot of the EP group dropless, or each of its experts' capacity
    // from each rank of the group.
    int64_t max_local_rows(int64_t N) const;

    // Plans routing from the router's choice of experts for each slot [N,k]
    // (N at most the tokens carved) and brings x[N,H]'s rows to the local
    // experts. Returns them in local
    // order; local_offsets() split them. A choice made on the backend is
    // planned there; one the host knows (token_id) is planned on the host and
    // its indices uploaded, so nothing waits for the device.
    Tensor dispatch(Ops& ops, const RouterChoice& choice, Tensor x);
    // A buffer for the experts' outputs, rows as dispatch() returned.
    Tensor expert_output() const { return local_out_.rows(0, local_rows_); }
    // y[N,H] = (or += as y_write says) router-weighted sum of
    // expert_output(), brought back.
    void combine(Ops& ops, Tensor w, Tensor y, Write y_write = Write::overwrite);

    // d expert_output (returned, local order) and dw += from dy; then dx =
    // (overwritten) from the experts' input gradient dxl (local order).
    Tensor combine_backward(Ops& ops, Tensor dy, Tensor w, Tensor dw);
    void dispatch_backward(Ops& ops, Tensor dxl, Tensor dx);
    // A buffer for the experts' input gradient, in local order (the experts
    // write every row of it).
    Tensor expert_input_grad() const { return d_local_in_.rows(0, local_rows_); }

    const RoutingCounts& counts() const { return counts_; }
    const std::vector<int64_t>& local_offsets() const { return local_offsets_; }

private:
    bool distributed() const { return ep_.size > 1; }
    Tensor slot_rows() const { return slot_row_.rows(0, slots_); }  // this forward's slots
    // Plans on the backend (plan_routing) or on the host, filling counts_.
    void plan_on_device(Ops& ops, Tensor expert_of_slot);
    void plan_on_host(Ops& ops, const std::vector<int32_t>& expert_of_slot, int64_t N);
    // After planning: x's rows into routing order, then to the local experts.
    Tensor send_rows(Ops& ops, Tensor x);
    // Tells each rank how many rows of each of its experts come; plans the
    // local order and uploads its index.
    void exchange_counts(Ops& ops);
    // Sends rows (routing order) to the expert ranks: out in local order.
    void to_experts(Ops& ops, Tensor routing_rows, Tensor local_rows);
    // The reverse: rows in local order back to routing order.
    void from_experts(Ops& ops, Tensor local_rows, Tensor routing_rows);

    int E_, k_;
    std::optional<double> capacity_factor_;
    GroupPlace ep_;
    int64_t H_ = 0;
    int64_t slots_ = 0;  // N * k of this forward
    RoutingCounts counts_;
    Tensor slot_row_, row_token_;  // plan indices on the backend
    Tensor send_, back_;           // routing order: inputs sent, outputs returned (saved)
    Tensor local_in_, local_out_;  // local order: the experts' input (saved) and output
    // Distributed only:
    Tensor source_in_, source_out_;  // rows as received from / sent to each rank (source order)
    Tensor local_index_;             // local row -> source-order row
    Tensor source_index_;            // source-order row -> local row (its inverse)
    std::vector<int64_t> send_rows_, recv_rows_;  // per rank
    std::vector<int32_t> local_index_host_, source_index_host_;
    std::vector<int64_t> local_offsets_;
    int64_t local_rows_ = 0;
    // scratch gradients
    Tensor d_back_, d_local_out_, d_local_in_, d_send_;
};

}  // namespace moe
