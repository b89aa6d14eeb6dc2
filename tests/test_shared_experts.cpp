// Shared experts (docs/MODEL-OPTIONS.md "Shared experts") in one MoE layer, in
// double: the layer's output is the routed experts' (the same layer without
// shared experts, from the same weights) plus each shared expert's SwiGLU,
// computed here naively from its rows of the fused tensors; the gradients of
// the input and of the shared experts' parameters against central finite
// differences.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/io/checkpoint.h"
#include "engine/moe/moe_layer.h"
#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/gradcheck.h"
#include "tests/test_models.h"

using namespace moe;

namespace {

constexpr int64_t kN = 7;  // tokens

// One MoE layer (layer 0 of cfg) with its parameters, input x [kN, H] and
// output y on the CPU in F64.
struct Layer {
    CpuOps& ops;
    ParameterSet params;
    Arena acts;
    std::unique_ptr<MoeLayer> moe;
    Tensor x, y, dy, dx, stats;

    Layer(const ModelConfig& cfg, CpuOps& o) : ops(o), acts(o) {
        moe = std::make_unique<MoeLayer>(cfg, params, 0, GroupPlace{});
        params.allocate(ops, Precision(DType::F64));
        params.initialize(11);  // each tensor from its own named stream: the routed weights agree across layers
        carve(cfg);
        acts.allocate();
        carve(cfg);
        Rng rng(5, "shared experts input");
        for (Tensor t : {x, dy})
            for (int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] = rng.normal();
    }
    void carve(const ModelConfig& cfg) {
        const int64_t H = cfg.hidden_size;
        x = acts.take(DType::F64, {kN, H});
        y = acts.take(DType::F64, {kN, H});
        dy = acts.take(DType::F64, {kN, H});
        dx = acts.take(DType::F64, {kN, H});
        stats = acts.take(DType::F64, {cfg.moe.num_experts + 1});
        // Acts and scratch in one arena: nothing here is rewound.
        moe->carve(acts, acts, Precision(DType::F64), kN, stats, false);
    }
    std::vector<double> forward() {
        moe->forward(ops, x, nullptr, {}, y);
        return std::vector<double>(y.ptr<double>(), y.ptr<double>() + y.numel());
    }
    // sum(dy * y): its gradient is dy, what backward() takes.
    double loss() {
        const std::vector<double> out = forward();
        double s = 0;
        for (size_t i = 0; i < out.size(); ++i) s += dy.ptr<double>()[i] * out[i];
        return s;
    }
    // A tensor as files name it (MODEL.md): gate and up are parts of one parameter.
    Tensor file_tensor(const std::string& name) const {
        for (const NamedTensor& t : params.named(ParameterSet::Slot::Value))
            if (t.name == name) return t.tensor;
        FAIL("no tensor " << name);
        return {};
    }
    const double* value(const std::string& name) const { return file_tensor(name).ptr<double>(); }
};

// A layer whose losses are sum(dy * y) alone (the router's balancing and
// z-losses are another test's), top-2 of 3 experts, H = 8, I = 6.
ModelConfig layer_config(int shared, int shared_hidden) {
    ModelConfig cfg = moe::test::tiny_model();
    cfg.moe.load_balancing_weight = 0;
    cfg.moe.z_loss_weight = 0;
    cfg.moe.shared_experts = shared;
    cfg.moe.shared_expert_hidden_size = shared_hidden;
    return cfg;
}

}  // namespace

TEST_CASE("a layer's shared experts add each expert's SwiGLU to the routed output", "[unit]") {
    for (const auto& [n, hidden] : {std::pair{1, 0}, std::pair{2, 4}, std::pair{3, 5}}) {
        CAPTURE(n, hidden);
        CpuOps ops;
        const ModelConfig cfg = layer_config(n, hidden);
        Layer with(cfg, ops), without(layer_config(0, 0), ops);
        const int64_t H = cfg.hidden_size, Is = hidden ? hidden : cfg.moe.expert_hidden_size;
        const std::string p = "layers.0.moe.shared_experts.";
        for (const char* name : {"w_gate", "w_up"}) {
            const Tensor t = with.file_tensor(p + name);
            REQUIRE((t.ndim == 2 && t.dim(0) == n * Is && t.dim(1) == H));
        }
        const Tensor down = with.file_tensor(p + "w_down");
        REQUIRE((down.ndim == 2 && down.dim(0) == H && down.dim(1) == n * Is));
        REQUIRE(with.params.all().size() == without.params.all().size() + 2);  // [gate | up] fused, and down
        const std::vector<double> y = with.forward(), routed = without.forward();
        const double *wg = with.value(p + "w_gate"), *wu = with.value(p + "w_up"), *wd = with.value(p + "w_down");
        const double* x = with.x.ptr<double>();
        double largest_shared = 0;
        for (int64_t t = 0; t < kN; ++t) {
            std::vector<double> shared(static_cast<size_t>(H), 0.0);
            for (int64_t i = 0; i < n; ++i)      // shared expert i: rows i*Is..(i+1)*Is of w_gate and w_up,
                for (int64_t j = i * Is; j < (i + 1) * Is; ++j) {  // the same columns of w_down
                    double g = 0, u = 0;
                    for (int64_t h = 0; h < H; ++h) {
                        g += x[t * H + h] * wg[j * H + h];
                        u += x[t * H + h] * wu[j * H + h];
                    }
                    const double a = g / (1 + std::exp(-g)) * u;
                    for (int64_t h = 0; h < H; ++h) shared[size_t(h)] += a * wd[h * n * Is + j];
                }
            for (int64_t h = 0; h < H; ++h) {
                const size_t at = size_t(t * H + h);
                largest_shared = std::max(largest_shared, std::fabs(shared[size_t(h)]));
                INFO("token " << t << ", column " << h);
                REQUIRE(y[at] == Approx(routed[at] + shared[size_t(h)]).epsilon(1e-12).margin(1e-13));
            }
        }
        REQUIRE(largest_shared > 1e-2);  // the shared experts' share is not negligible
    }
}

TEST_CASE("a layer's shared experts: input and parameter gradients match finite differences", "[unit]") {
    for (const auto& [n, hidden] : {std::pair{1, 0}, std::pair{2, 4}}) {
        CAPTURE(n, hidden);
        CpuOps ops;
        Layer layer(layer_config(n, hidden), ops);
        // NaN in every gradient: the layer must write its parameters' whole.
        moe::test::poison_grads(layer.params);
        layer.forward();
        layer.moe->backward(ops, layer.x, layer.dy, layer.dx, 1.0, Write::overwrite);
        const auto loss = [&] { return layer.loss(); };
        moe::test::check_gradient("x", loss, layer.x.ptr<double>(), layer.dx.ptr<double>(), layer.x.numel(), 1e-6,
                                  1e-9, 56);
        for (Param& p : layer.params.all()) {
            REQUIRE(ops.sum_squares({p.grad})[0] > 0);
            moe::test::check_gradient(p.name, loss, p.value.ptr<double>(), p.grad.ptr<double>(), p.numel(), 1e-6,
                                      1e-9, 32);
        }
    }
}

TEST_CASE("a shared expert size spelt out as the routed experts' is the same model on resume", "[unit]") {
    Config checkpoint;
    checkpoint.model = layer_config(1, 0);  // 0: the routed experts' inner size
    Config current = checkpoint;
    current.model.moe.shared_expert_hidden_size = current.model.moe.expert_hidden_size;
    CHECK(model_difference(checkpoint, current).empty());
    current.model.moe.shared_expert_hidden_size = current.model.moe.expert_hidden_size + 1;
    CHECK(model_difference(checkpoint, current).rfind("model.moe.shared_expert_hidden_size", 0) == 0);
}
