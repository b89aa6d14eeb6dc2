// The models tests build, from the few sizes that tell them apart: one
// helper, so every test model is the same kind of model. tiny_model() is
// the smallest that still exercises every path (two layers, GQA, top-2 of 3
// experts, dynamics), for tests that check gradients exactly; Variant names a
// change of it (a routing or dynamics variant); poison_grads fills gradients
// with NaN.
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe::test {

struct ModelSizes {
    int vocab, hidden, layers, heads, kv_heads, experts, expert_hidden, controller;
    double init_std = 0.02;
    double load_balancing_weight = 0.01, z_loss_weight = 0.0;
    int top_k = 2;
};

inline ModelConfig test_model(const ModelSizes& s) {
    ModelConfig m;
    m.vocab_size = s.vocab;
    m.hidden_size = s.hidden;
    m.num_layers = s.layers;
    m.num_heads = s.heads;
    m.num_kv_heads = s.kv_heads;
    m.init_std = s.init_std;
    m.moe.num_experts = s.experts;
    m.moe.top_k = s.top_k;
    m.moe.expert_hidden_size = s.expert_hidden;
    m.moe.load_balancing_weight = s.load_balancing_weight;
    m.moe.z_loss_weight = s.z_loss_weight;
    m.dynamics.controller_size = s.controller;
    return m;
}

// init_std 0.3: large enough that every path carries a visible gradient.
inline ModelConfig tiny_model() { return test_model({11, 8, 2, 2, 1, 3, 6, 5, 0.3, 0.1, 0.01}); }

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
