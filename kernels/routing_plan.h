// Routing is data: which token-slot goes to which expert, in which row of the
// expert-sorted buffer, and what capacity dropped. One plan drives the forward
// permutation and combine and their backward; the multi-process dispatch adds
// per-rank counts to it.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

namespace moe {

// The sizes of a plan: all the host needs when the plan's indices stay on the
// device (Ops::plan_routing).
struct RoutingCounts {
    int num_tokens = 0;   // N
    int top_k = 0;        // k
    int num_experts = 0;  // E
    int64_t capacity = -1;         // token-slots per expert; -1: dropless
    std::vector<int64_t> offsets;  // [E+1] rows of expert e: offsets[e]..offsets[e+1]
    std::vector<int64_t> dropped;  // [E] slots dropped per expert

    int64_t rows() const { return offsets.back(); }
    int64_t total_dropped() const;
    // Token-slots routed to expert e before capacity (kept + dropped).
    int64_t routed(int e) const { return offsets[e + 1] - offsets[e] + dropped[e]; }
};

struct RoutingPlan : RoutingCounts {
    std::vector<int32_t> slot_row;   // [N*k] row of slot t*k+j, -1 if dropped
    std::vector<int32_t> row_token;  // [R] token of each row
};

// ceil(c * N * k / E): the capacity of one expert for one micro-batch; -1
// (dropless) without a factor.
int64_t expert_capacity(std::optional<double> capacity_factor, int num_tokens, int top_k, int num_experts);

// expert_of_slot[N*k]: the expert chosen by each token-slot t*k+j. Rows of an
// expert are in token order; with a capacity, slots past it (in token order)
// are dropped.
RoutingPlan build_routing_plan(const int32_t* expert_of_slot, int num_tokens, int top_k, int num_experts,
                               std::optional<double> capacity_factor);

}  // namespace moe
