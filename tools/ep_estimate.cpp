#include "tools/ep_estimate.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe {

size_t tail_reduce_bytes(const Model& model) {
    const std::vector<std::vector<Param*>>& buckets = model.gradient_buckets();
    const auto early = [&](const Param& p) {  // handed over while the backward still runs
        for (size_t b = 0; b + 1 < buckets.size(); ++b)
            if (std::find(buckets[b].begin(), buckets[b].end(), &p) != buckets[b].end()) return true;
        return false;
    };
    size_t bytes = 0;
    for (const Param& p : model.params().all())
        if (!p.is_expert_stack() && !early(p)) bytes += p.grad.bytes();
    return bytes;
}

double ranks_per_token(const ModelConfig& m, int ep) {
    const int E = m.moe.num_experts, G = std::max(1, m.moe.groups), M = G > 1 ? m.moe.group_limit : 1;
    const int k = m.moe.top_k, per_group = E / G, per_rank = E / ep;
    const double pool = double(M) * per_group;  // the experts a token may take
    // The chance that none of the k lands on c given experts of the pool.
    const auto missed = [&](int c) {
        double p = 1;
        for (int i = 0; i < k && p > 0; ++i) p *= std::max(0.0, (pool - c - i) / (pool - i));
        return p;
    };
    double ranks = 0;
    for (int r = 0; r < ep; ++r) {
        // ways[n][c]: the sets of n of the groups so far that hold c of rank r's experts.
        std::vector<std::vector<double>> ways(size_t(M) + 1, std::vector<double>(size_t(per_rank) + 1, 0.0));
        ways[0][0] = 1;
        for (int g = 0; g < G; ++g) {
            const int overlap = std::max(0, std::min((g + 1) * per_group, (r + 1) * per_rank) -
                                                std::max(g * per_group, r * per_rank));
            for (int n = std::min(g + 1, M); n >= 1; --n)
                for (int c = per_rank; c >= overlap; --c)
                    ways[size_t(n)][size_t(c)] += ways[size_t(n - 1)][size_t(c - overlap)];
        }
        double sets = 0, reached = 0;
        for (int c = 0; c <= per_rank; ++c) {
            sets += ways[size_t(M)][size_t(c)];
            reached += ways[size_t(M)][size_t(c)] * (1 - missed(c));
        }
        ranks += reached / sets;
    }
    return ranks;
}

double all_to_all_bytes_per_token(const ModelConfig& m, int ep) {
    const double rows = 4.0 * ranks_per_token(m, ep) * m.hidden_size * 2.0;
    const double per_slot = 4 + 4 + (m.moe.router == RouterKind::learned ? 4 : 0);
    return m.num_layers * (rows + m.moe.top_k * per_slot);
}

EpStepEstimate estimate_ep_step(const ModelConfig& m, const OneGpuStep& one, int ep, double load_max_over_mean,
                                double expert_params_share, double tail_reduce_bytes, const NodeLinks& links) {
    if (ep < 2 || m.moe.num_experts % ep != 0 || load_max_over_mean < 1 || expert_params_share < 0 ||
        expert_params_share > 1 || one.step_s <= 0 || one.experts_s < 0 || one.optimizer_s < 0 ||
        one.experts_s + one.optimizer_s > one.step_s || links.all_to_all_gbps <= 0 || links.all_reduce_gbps <= 0)
        throw std::invalid_argument("estimate_ep_step: ep " + std::to_string(ep) + ", load " +
                                    std::to_string(load_max_over_mean) + " or the measured times are out of range");
    // Uniform routing sends (ep-1)/ep of the rows off the rank; all-reduce's
    // bus bandwidth counts 2(ep-1)/ep of the buffer.
    const double remote = double(ep - 1) / ep;
    EpStepEstimate e{};
    e.experts_s = one.experts_s * load_max_over_mean;
    e.optimizer_s = one.optimizer_s * (1 - expert_params_share * remote);
    e.all_to_all_s = one.tokens * all_to_all_bytes_per_token(m, ep) * remote / (links.all_to_all_gbps * 1e9);
    e.all_reduce_s = tail_reduce_bytes * 2 * remote / (links.all_reduce_gbps * 1e9);
    e.step_s = one.step_s - one.experts_s - one.optimizer_s + e.experts_s + e.optimizer_s + e.all_to_all_s +
               e.all_reduce_s;
    return e;
}

}  // namespace moe
