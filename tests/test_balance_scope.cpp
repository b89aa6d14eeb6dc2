// The balancing loss over the global batch (docs/MODEL-OPTIONS.md "Load-
// balancing loss", balance_scope: global_batch): f_e counts the slots of the
// step's micro-batches so far on all ranks, P_e stays the micro-batch's.
#include <spdlog/spdlog.h>

#include <string>
#include <vector>

#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/gradcheck.h"
#include "tests/test_models.h"
#include "tests/train_fixture.h"

using namespace moe;

namespace {

constexpr int kB = 2, kT = 5;

std::vector<int32_t> random_tokens(const ModelConfig& cfg, Rng& rng) {
    std::vector<int32_t> ids(static_cast<size_t>(kB * kT));
    for (int32_t& id : ids) id = int32_t(rng.next() % uint64_t(cfg.vocab_size));
    return ids;
}

ModelConfig balanced_model() {
    ModelConfig m = moe::test::tiny_model();
    m.moe.num_experts = 4;
    m.moe.load_balancing_weight = 0.5;  // large: the balance term is visible in every gradient
    return m;
}

std::vector<std::vector<int64_t>> routed(const ForwardResult& r) {
    std::vector<std::vector<int64_t>> out;
    for (const MoeStats& layer : r.layers) out.push_back(layer.routed);
    return out;
}

}  // namespace

// aux is linear in f, and f = c / sum(c): with two micro-batches of the same
// slot count, the loss over both counts is the mean of the losses over each.
TEST_CASE("the balancing loss over the slots so far weighs each micro-batch's counts by its slots", "[unit]") {
    CpuOps ops;
    const ModelConfig m = balanced_model();
    Model model(m, ops, DType::F64, kB, kT);
    model.params().initialize(5);
    Rng rng(8);
    const std::vector<int32_t> in1 = random_tokens(m, rng), tg1 = random_tokens(m, rng);
    const std::vector<int32_t> in2 = random_tokens(m, rng), tg2 = random_tokens(m, rng);
    const std::vector<std::vector<int64_t>> c1 = routed(model.forward(in1.data(), tg1.data()));
    ForwardResult r = model.forward(in2.data(), tg2.data());
    const std::vector<std::vector<int64_t>> c2 = routed(r);
    REQUIRE(c1 != c2);
    std::vector<double> local, over_first, over_both;
    for (const MoeStats& layer : r.layers) local.push_back(layer.losses.aux);
    model.balance_over(c1, r);
    for (const MoeStats& layer : r.layers) over_first.push_back(layer.losses.aux);
    std::vector<std::vector<int64_t>> both = c1;
    for (size_t l = 0; l < both.size(); ++l)
        for (size_t e = 0; e < both[l].size(); ++e) both[l][e] += c2[l][e];
    model.balance_over(both, r);
    double total = 0;
    for (size_t l = 0; l < r.layers.size(); ++l) {
        CAPTURE(l);
        CHECK(over_first[l] != local[l]);
        CHECK(r.layers[l].losses.aux == Approx((over_first[l] + local[l]) / 2).epsilon(1e-13));
        total += r.layers[l].losses.aux + r.layers[l].losses.z_loss;
    }
    CHECK(r.aux == Approx(total).epsilon(1e-15));
    // The micro-batch's own counts give its own loss back.
    model.balance_over(c2, r);
    for (size_t l = 0; l < r.layers.size(); ++l) CHECK(r.layers[l].losses.aux == Approx(local[l]).epsilon(1e-14));
}

TEST_CASE("gradients with the balance over given counts match finite differences, recomputed or not", "[unit]") {
    CpuOps ops;
    const ModelConfig m = balanced_model();
    const std::vector<std::vector<int64_t>> counts = {{7, 1, 9, 3}, {2, 8, 5, 5}};  // from other micro-batches
    Rng rng(9);
    const std::vector<int32_t> in = random_tokens(m, rng), tg = random_tokens(m, rng);
    std::vector<std::vector<double>> grads[2];
    for (Recompute recompute : {Recompute::none, Recompute::full}) {
        CAPTURE(int(recompute));
        ModelOptions o;
        o.recompute = recompute;
        Model model(m, ops, DType::F64, kB, kT, o);
        ParameterSet& params = model.params();
        params.initialize(6);
        const auto loss = [&] {
            ForwardResult r = model.forward(in.data(), tg.data());
            model.balance_over(counts, r);
            return r.loss + r.aux;
        };
        ForwardResult r = model.forward(in.data(), tg.data(), 1.0);
        model.balance_over(counts, r);
        model.backward(Write::overwrite);
        for (const Param& p : params.all())
            grads[int(recompute == Recompute::full)].emplace_back(p.grad.ptr<double>(), p.grad.ptr<double>() + p.numel());
        if (recompute == Recompute::full) continue;
        for (Param& p : params.all())
            if (p.name.find("router") != std::string::npos)
                moe::test::check_gradient(p.name, loss, p.value.ptr<double>(), p.grad.ptr<double>(), p.numel(), 1e-6,
                                          1e-9, 16);
    }
    CHECK(grads[1] == grads[0]);  // the recomputed forward keeps the balance given
}

TEST_CASE("global_batch balancing equals micro_batch's for one micro-batch on one rank and differs with two",
          "[unit]") {
    spdlog::set_level(spdlog::level::warn);
    CpuOps ops;
    for (int accumulation : {1, 2}) {
        CAPTURE(accumulation);
        Config c = moe::test::small_config("balance-scope-" + std::to_string(accumulation));
        c.model.moe.load_balancing_weight = 0.5;
        c.train.grad_accum_steps = accumulation;
        c.train.steps = 5;
        const TrainSummary micro = train(c, ops);
        Config g = c;
        g.model.moe.balance_scope = BalanceScope::global_batch;
        g.run.out_dir += "-global";
        const TrainSummary global = train(g, ops);
        REQUIRE(global.losses.size() == micro.losses.size());
        if (accumulation == 1) CHECK(global.losses == micro.losses);  // bit for bit
        else CHECK(global.losses.back() != micro.losses.back());
    }
    spdlog::set_level(spdlog::level::info);
}
