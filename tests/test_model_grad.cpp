// The whole model's gradients, in double, against central finite differences,
// on tiny configs that cover every routing and dynamics variant.
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"
#include "tests/test_models.h"

using namespace moe;
using moe::test::tiny_model;
using moe::test::Variant;

namespace {

// n random token ids of cfg's vocabulary.
std::vector<int32_t> random_tokens(const ModelConfig& cfg, int n, Rng& rng) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& id : ids) id = int32_t(rng.next() % cfg.vocab_size);
    return ids;
}

// Checks d(loss + aux)/d(every parameter) on a fixed batch of B=2, T=5.
void check_model_gradients(const ModelConfig& cfg) {
    CpuOps ops;
    const int B = 2, T = 5;
    Model model(cfg, ops, DType::F64, B, T);
    ParameterSet& params = model.params();
    params.initialize(7);
    // Perturb the norms, mu and biases away from their constant init so their
    // gradients are generic.
    Rng rng(99);
    for (Param& p : params.all())
        if (p.shape.size() == 1)
            for (int64_t i = 0; i < p.numel(); ++i) p.value.ptr<double>()[i] += 0.1 * rng.normal();

    const std::vector<int32_t> inputs = random_tokens(cfg, B * T, rng), targets = random_tokens(cfg, B * T, rng);
    auto loss = [&] {
        const ForwardResult r = model.forward(inputs.data(), targets.data());
        return r.loss + r.aux;
    };
    moe::test::poison_grads(params);  // the backward writes every gradient whole
    const ForwardResult r = model.forward(inputs.data(), targets.data(), 1.0);
    model.backward(Write::overwrite);
    if (cfg.moe.router == moe::RouterKind::learned) REQUIRE(r.aux > 0);
    if (cfg.moe.capacity_factor) REQUIRE(r.dropped() > 0);

    for (Param& p : params.all()) {
        REQUIRE(params.ops().sum_squares({p.grad})[0] > 0);  // every parameter is reached
        moe::test::check_gradient(p.name, loss, p.value.ptr<double>(), p.grad.ptr<double>(), p.numel(), 1e-6,
                                  1e-9, 16);
    }
}

}  // namespace

TEST_CASE("model gradients match finite differences", "[unit]") {
    const std::vector<Variant> variants = {
        {"learned top-2, shared dynamics", [](ModelConfig&) {}},
        {"token_id router", [](ModelConfig& m) {
             m.moe.router = moe::RouterKind::token_id;
             m.moe.top_k = 1;
         }},
        {"capacity with drops", [](ModelConfig& m) { m.moe.capacity_factor = 0.5; }},
        {"dynamics per layer", [](ModelConfig& m) { m.dynamics.shared = false; }},
        {"dynamics off", [](ModelConfig& m) { m.dynamics.enabled = false; }},
        {"qk_norm", [](ModelConfig& m) { m.qk_norm = true; }},
        {"tied embeddings", [](ModelConfig& m) { m.tie_embeddings = true; }},
        {"raw top-k weights, no z-loss", [](ModelConfig& m) {
             m.moe.normalize_top_k = false;
             m.moe.z_loss_weight = 0;
         }},
        {"sigmoid scores, group-limited", [](ModelConfig& m) {
             m.moe.score = moe::RouterScore::sigmoid;
             m.moe.z_loss_weight = 0;
             m.moe.groups = 3;  // an expert a group: top-2 of the best 2
             m.moe.group_limit = 2;
         }},
        {"one shared expert", [](ModelConfig& m) { m.moe.shared_experts = 1; }},
        {"two shared experts of another inner size, capacity with drops", [](ModelConfig& m) {
             m.moe.shared_experts = 2;
             m.moe.shared_expert_hidden_size = 4;
             m.moe.capacity_factor = 0.5;  // a dropped slot still passes through the shared experts
         }},
    };
    for (const Variant& v : variants) {
        SECTION(v.name) {
            ModelConfig cfg = tiny_model();
            v.apply(cfg);
            check_model_gradients(cfg);
        }
    }
}

TEST_CASE("a micro-batch's backward adds to the gradients the first one wrote", "[unit]") {
    // Shared dynamics and tied embeddings: parameters that several ops of one
    // backward contribute to, so only the first of them may overwrite.
    ModelConfig cfg = tiny_model();
    cfg.tie_embeddings = true;
    CpuOps ops;
    Model model(cfg, ops, DType::F64, 2, 5);
    ParameterSet& params = model.params();
    params.initialize(3);
    Rng rng(17);
    std::vector<std::vector<int32_t>> inputs, targets;
    for (int m = 0; m < 2; ++m) {
        inputs.push_back(random_tokens(cfg, 10, rng));
        targets.push_back(random_tokens(cfg, 10, rng));
    }
    // Every gradient after backwards of the given micro-batches, from NaN.
    const auto gradients = [&](const std::vector<int>& micro_batches) {
        moe::test::poison_grads(params);
        for (size_t i = 0; i < micro_batches.size(); ++i) {
            const int m = micro_batches[i];
            model.forward(inputs[m].data(), targets[m].data(), 0.5);
            model.backward(i == 0 ? Write::overwrite : Write::add);
        }
        std::vector<std::vector<double>> out;
        for (const Param& p : params.all()) out.emplace_back(p.grad.ptr<double>(), p.grad.ptr<double>() + p.numel());
        return out;
    };
    const auto first = gradients({0}), second = gradients({1}), both = gradients({0, 1});
    size_t k = 0;
    for (const Param& p : params.all()) {
        INFO(p.name);
        for (size_t i = 0; i < both[k].size(); ++i)
            REQUIRE(both[k][i] == Approx(first[k][i] + second[k][i]).epsilon(1e-12).margin(1e-15));
        ++k;
    }
}

// The head's gradient is made by the training forward (forward with a
// loss_scale); a backward without one to follow stops with the reason, and an
// evaluation forward leaves the logits as they are.
TEST_CASE("a backward follows a training forward once", "[unit]") {
    const ModelConfig cfg = tiny_model();
    CpuOps ops;
    Model model(cfg, ops, DType::F64, 2, 5);
    model.params().initialize(3);
    Rng rng(18);
    const std::vector<int32_t> inputs = random_tokens(cfg, 10, rng), targets = random_tokens(cfg, 10, rng);
    const auto logits = [&] {
        const Tensor& l = model.logits();
        return std::vector<double>(l.ptr<double>(), l.ptr<double>() + l.numel());
    };
    const auto no_forward = [&] { model.backward(Write::overwrite); };
    REQUIRE_THROWS_WITH(no_forward(), Catch::Contains("no training forward to follow"));

    const double eval_loss = model.forward(inputs.data(), targets.data()).loss;
    const std::vector<double> eval_logits = logits();
    REQUIRE_THROWS_WITH(no_forward(), Catch::Contains("no training forward to follow"));
    REQUIRE(model.forward(inputs.data(), targets.data()).loss == eval_loss);
    REQUIRE(logits() == eval_logits);  // an evaluation forward keeps them

    const double train_loss = model.forward(inputs.data(), targets.data(), 0.5).loss;
    REQUIRE(train_loss == eval_loss);  // making the gradient changes no loss
    // Each row of the gradient: 0.5 / N (softmax - onehot), summing to 0.
    const std::vector<double> grad = logits();
    const int64_t V = cfg.vocab_size;
    for (int64_t n = 0; n < 10; ++n) {
        double sum = 0;
        for (int64_t i = 0; i < V; ++i) sum += grad[size_t(n * V + i)];
        REQUIRE(std::abs(sum) < 1e-15);
        REQUIRE(grad[size_t(n * V + targets[size_t(n)])] < 0);
    }
    model.backward(Write::overwrite);
    REQUIRE_THROWS_WITH(no_forward(), Catch::Contains("no training forward to follow"));
}
