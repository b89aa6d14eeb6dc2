// Moves token vectors to their experts and back (Megatron's token
// dispatcher). It plans the routing, permutes rows into expert order
// and, with expert parallelism, sends each rank the rows of its experts by an
// all-to-all-v and brings the outputs back the same way; then it combines the
// outputs weighted by the router. The backward replays the same plan.
//
// Row orders: "routing order" is this rank's slots sorted by global expert (so
// by destination rank), then token; "local order" is the rows this rank's
// experts process, sorted by local expert, then by source rank, then by the
// source's routing order. With one rank the experts work on the routing order
// directly.
//
// With expert parallelism a token crosses to a rank once, however many of
// that rank's experts it chose (DeepSeek-V3's node-limited dispatch), and
// one combined row per (token, rank) comes back:
// - "packed order" (the sender): the distinct (destination rank, token)
//   pairs of the kept slots, by rank, then token. x's packed rows go out; each
//   routed row's combine weight and the index of its packed row within its
//   rank's block go with them (routing order).
// - "packed source order" (the expert rank): the packed rows received, by
//   source rank, then the source's packed order; "source order": the routed
//   rows received (their weights and packed rows), by source rank, then the
//   source's routing order. The local rows gather from the packed rows.
// - combine: each packed row's outputs, weighted and summed (its slots by
//   local expert), go back as one row; the sender sums its token's rows into
//   y. So the sum over a token's experts runs per rank first: equal to one
//   process's to rounding (on the CPU bit for bit up to top-2, a sum of two
//   terms commuting; on the GPU a rank's part is rounded to bf16 to travel).
// - backward: dy's packed rows go out; the expert rank gives each local row
//   its gradient and each slot its weight's gradient (sent back, one stat
//   value a routed row); the experts' input gradient, summed per packed row,
//   comes back and is summed per token into dx.
// Bytes one layer sends to other ranks (comm bytes_sent_all_to_all), with
// Pk_out the packed rows this rank sends to other ranks and Pk_in those it
// gets from them, S_out and S_in the kept slots likewise, and a and s the act
// and stat dtypes' sizes: forward, the counts (El + 1 int32 to each other
// rank), S_out * (4 + s) for the packed rows' indices and the weights,
// Pk_out * H * a for the rows out and Pk_in * H * a for the combined rows
// back; backward, Pk_out * H * a (dy) + Pk_in * H * a (dx), plus S_in * s for
// the weights' gradients when the router trains.
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
    // experts, and (distributed) the choice's weights to their ranks. Returns
    // the rows in local order; local_offsets() split them. A choice made on
    // the backend is planned there; one the host knows (token_id) is planned
    // on the host and its indices uploaded, so nothing waits for the device
    // (distributed, the host reads the plan back: the packed order is planned
    // there). choice.weights must stay unchanged until the backward.
    Tensor dispatch(Ops& ops, const RouterChoice& choice, Tensor x);
    // A buffer for the experts' outputs, rows as dispatch() returned.
    Tensor expert_output() const { return local_out_.rows(0, local_rows_); }
    // y[N,H] = (or += as y_write says) router-weighted sum of
    // expert_output(), brought back; then, with a residual [N,H], y =
    // residual + that (Ops::combine_forward's rounding).
    void combine(Ops& ops, Tensor y, Write y_write = Write::overwrite, Tensor residual = {});

    // d expert_output (returned, local order) and dw[N,k] += (stat; empty: not
    // wanted) from dy; then dx = (overwritten) from the experts' input
    // gradient dxl (local order).
    Tensor combine_backward(Ops& ops, Tensor dy, Tensor dw);
    void dispatch_backward(Ops& ops, Tensor dxl, Tensor dx);
    // A buffer for the experts' input gradient, in local order (the experts
    // write every row of it).
    Tensor expert_input_grad() const { return d_local_in_.rows(0, local_rows_); }

    const RoutingCounts& counts() const { return counts_; }
    const std::vector<int64_t>& local_offsets() const { return local_offsets_; }

private:
    bool distributed() const { return ep_.size > 1; }
    Tensor slot_rows() const { return slot_row_.rows(0, slots_); }  // this forward's slots
    // Plans on the backend (plan_routing) or on the host, filling counts_ (and,
    // distributed, slot_row_host_).
    void plan_on_device(Ops& ops, Tensor expert_of_slot);
    void plan_on_host(Ops& ops, const std::vector<int32_t>& expert_of_slot, int64_t N);
    // Distributed: plans the packed order, tells each rank how many routed and
    // packed rows come and which packed row each routed row reads, plans the
    // local order and uploads every index.
    void plan_exchange(Ops& ops);
    // The sender's orders (host): each routing row's slot, token t's packed
    // row to rank p ([N, P], -1 if none), each packed row's token, and each
    // routing row's packed row within its rank's block. Sets packed_out_.
    struct PackedOrder {
        std::vector<int32_t> row_slot, token_packed, packed_token, row_packed;
    };
    PackedOrder plan_packed_order();
    // What comes to this rank: the routed rows from rank s for local expert e
    // ([P, local experts]), where each source rank's routed and packed rows
    // start, and each routed row's packed row in packed source order. Sets
    // the rows per rank out and in.
    struct Arrivals {
        std::vector<int64_t> rows_from, source_start, packed_in_start;
        std::vector<int32_t> source_packed;
    };
    Arrivals tell_ranks(const std::vector<int32_t>& row_packed);
    // The expert rank's orders: each local row's packed row, each packed row's
    // slots as source and as local rows, each source row's slot. Sets
    // local_offsets_.
    struct LocalOrder {
        std::vector<int32_t> local_packed, packed_source, packed_local, source_position;
    };
    LocalOrder plan_local_order(const Arrivals& in);
    // Rows of send (row_size() elements each, send_rows[p] for rank p) to
    // recv (recv_rows[p] from rank p) over the EP group.
    void exchange(Tensor send, const std::vector<int64_t>& send_rows, Tensor recv,
                  const std::vector<int64_t>& recv_rows) const;
    // packed_weights_ as [packed rows, columns_], the weights of combine.
    Tensor packed_weights() const;

    int E_, k_;
    std::optional<double> capacity_factor_;
    GroupPlace ep_;
    int64_t H_ = 0;
    int64_t slots_ = 0;  // N * k of this forward
    Tensor weights_;     // the choice's weights [N,k] (stat)
    RoutingCounts counts_;
    Tensor slot_row_, row_token_;  // plan indices on the backend
    Tensor send_, back_;           // one rank: routing order, inputs sent and outputs returned (saved);
                                   // distributed: packed order, x's rows out and the combined rows back (scratch)
    Tensor local_in_, local_out_;  // local order: the experts' input (saved) and output
    std::vector<int64_t> local_offsets_;
    int64_t local_rows_ = 0;
    // scratch gradients: one rank, d_back_ and d_send_ in routing order; distributed,
    // dy's packed rows out (d_send_) and dx's packed rows back (d_back_)
    Tensor d_back_, d_local_out_, d_local_in_, d_send_;

    // Distributed only. The sender:
    int columns_ = 0;                          // the most routed rows of one packed row: min(k, local experts)
    std::vector<int32_t> slot_row_host_;       // the plan's slot_row
    std::vector<int64_t> send_rows_, recv_rows_;      // routed rows per rank, out and in
    std::vector<int64_t> packed_out_, packed_in_;     // packed rows per rank, out and in
    int64_t packed_out_rows_ = 0, packed_in_rows_ = 0;
    Tensor packed_token_;  // packed row -> token
    Tensor token_packed_;  // [N, P]: token t's packed row to rank p, -1 if none
    Tensor row_slot_;      // routing row -> slot
    Tensor weights_out_;   // stat: each routed row's weight (routing order), scratch
    Tensor dweights_back_; // stat: each routed row's weight gradient, back from its rank (routing order)
    // The expert rank:
    Tensor packed_rows_;      // packed source order: x's rows in, combined rows out; dy in, dx out
    Tensor weights_in_;       // stat [rows,1], source order: each routed row's weight
    Tensor dweights_in_;      // stat [rows,1], source order: their gradients
    Tensor local_index_;      // local row -> packed source row
    Tensor packed_source_;    // [packed rows, columns_]: a packed row's slots as source rows, -1 past them
    Tensor packed_local_;     // the same as local rows
    Tensor source_position_;  // source row -> its slot in packed_source_
    Tensor packed_weights_;   // stat [packed rows * columns_, 1]: the slots' weights, 0 past a row's (saved)
    Tensor packed_dweights_;  // stat, the same layout: their gradients
};

}  // namespace moe
