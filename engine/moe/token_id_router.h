// The token_id router (MODEL.md "Routers", the seed's Token-Routed MLP):
// expert = token id mod E, weight 1, k = 1, no parameters, no losses. The
// choice is known on the host from the ids alone, before any device work.
#pragma once
#include <vector>

#include "engine/moe/router.h"

namespace moe {

class TokenIdRouter : public Router {
public:
    explicit TokenIdRouter(const MoeConfig& cfg) : num_experts_(cfg.num_experts), top_k_(cfg.top_k) {}
    void carve(Arena& acts, Arena& scratch, const Precision& pr, int64_t N, Tensor stats) override;
    RouterChoice forward(Ops& ops, Tensor x, const int32_t* ids) override;
    void set_load(const RoutingCounts&) override {}
    RouterLosses losses(const double*) const override { return {}; }
    bool weights_have_gradient() const override { return false; }
    void backward(Ops&, Tensor, Tensor, Tensor, double, Write) override {}

private:
    int num_experts_, top_k_;
    Tensor weights_;  // constant 1
    std::vector<int32_t> experts_;  // [N]
};

}  // namespace moe
