#include "kernels/routing_plan.h"

#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace moe {

int64_t RoutingCounts::total_dropped() const { return std::accumulate(dropped.begin(), dropped.end(), int64_t(0)); }

int64_t expert_capacity(std::optional<double> capacity_factor, int num_tokens, int top_k, int num_experts) {
    if (!capacity_factor) return -1;
    return int64_t(std::ceil(*capacity_factor * double(num_tokens) * top_k / num_experts));
}

RoutingPlan build_routing_plan(const int32_t* expert_of_slot, int num_tokens, int top_k, int num_experts,
                               std::optional<double> capacity_factor) {
    RoutingPlan p;
    p.num_tokens = num_tokens;
    p.top_k = top_k;
    p.num_experts = num_experts;
    p.capacity = expert_capacity(capacity_factor, num_tokens, top_k, num_experts);
    const int64_t slots = int64_t(num_tokens) * top_k;

    // Pass 1: kept slots per expert, in token order.
    std::vector<int64_t> kept(num_experts, 0);
    p.dropped.assign(num_experts, 0);
    for (int64_t s = 0; s < slots; ++s) {
        const int e = expert_of_slot[s];
        if (e < 0 || e >= num_experts)
            throw std::logic_error("routing: slot " + std::to_string(s) + " names expert " + std::to_string(e));
        if (p.capacity >= 0 && kept[e] >= p.capacity)
            ++p.dropped[e];
        else
            ++kept[e];
    }
    p.offsets.assign(num_experts + 1, 0);
    for (int e = 0; e < num_experts; ++e) p.offsets[e + 1] = p.offsets[e] + kept[e];

    // Pass 2: assign rows; the same walk drops the same slots.
    std::vector<int64_t> next(p.offsets.begin(), p.offsets.end() - 1);
    p.slot_row.assign(slots, -1);
    p.row_token.assign(p.rows(), -1);
    for (int64_t s = 0; s < slots; ++s) {
        const int e = expert_of_slot[s];
        if (next[e] == p.offsets[e + 1]) continue;  // past capacity
        const int64_t r = next[e]++;
        p.slot_row[s] = int32_t(r);
        p.row_token[r] = int32_t(s / top_k);
    }
    return p;
}

}  // namespace moe
