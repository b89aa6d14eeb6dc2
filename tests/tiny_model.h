// The smallest model that still exercises every path (two layers, GQA, top-2
// of 3 experts, dynamics), for tests that check gradients exactly, a named
// change of it (a routing or dynamics variant), and NaN-filled gradients.
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/parameters.h"

namespace moe::test {

inline ModelConfig tiny_model() {
    ModelConfig m;
    m.vocab_size = 11;
    m.hidden_size = 8;
    m.num_layers = 2;
    m.num_heads = 2;
    m.num_kv_heads = 1;
    m.init_std = 0.3;  // large enough that every path carries a visible gradient
    m.moe.num_experts = 3;
    m.moe.top_k = 2;
    m.moe.expert_hidden_size = 6;
    m.moe.load_balancing_weight = 0.1;
    m.moe.z_loss_weight = 0.01;
    m.dynamics.controller_size = 5;
    return m;
}

struct Variant {
    std::string name;
    std::function<void(ModelConfig&)> apply;
};

// Every gradient buffer (F32 or F64) filled with NaN: a backward that
// overwrites the gradients must leave no element of them unwritten.
inline void poison_grads(ParameterSet& params) {
    for (Param& p : params.all()) {
        const size_t n = size_t(p.numel());
        if (p.grad.dtype == DType::F64)
            params.ops().copy_from_host(p.grad, std::vector<double>(n, std::nan("")).data());
        else
            params.ops().copy_from_host(p.grad, std::vector<float>(n, std::nanf("")).data());
    }
}

}  // namespace moe::test
