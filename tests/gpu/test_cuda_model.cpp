// Whole steps on the GPU against the CPU backend: one step's loss and every
// parameter gradient on small configs (learned, token_id, capacity, dynamics
// shared / per layer / off, qk-norm, shared experts), bit-identical repeats, and 200 training
// steps whose loss curve follows the CPU's.
//
// Tolerances: the GPU computes in bf16 (8 significant bits) with fp32
// accumulation, the CPU in fp32, from the same weights (the CPU's rounded to
// bf16 like the GPU's working copies). A step passes some 30 bf16 roundings
// from input to loss, whose errors mostly cancel in the mean: the loss is
// held to 0.2% (a CPU emulation of the kernels differs by at most 0.023%; a
// bug that left some LM head rows unwritten showed as 0.4%), the aux loss to
// 1%, and each gradient tensor to 5% relative L2 error (||g_gpu - g_cpu|| /
// ||g_cpu||). A learned router's choice is discrete: a token within bf16
// noise of a tie may take another expert on the GPU (seen in the emulation:
// 6-13% errors in the two experts and router rows involved, 1% everywhere
// else). A layer whose routing differs (other token counts per expert) has
// its MoE gradients reported, not checked; everything else is.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "engine/model/model.h"
#include "engine/train/trainer.h"
#include "tests/gpu/gpu_testing.h"
#include "tests/test_models.h"
#include "tests/train_fixture.h"

using namespace moe;
using namespace moe::test;

namespace {

// Big enough for the GPU kernels' real paths (head dim 16, E = 6 not a power
// of two, T = 40 not a multiple of a tile), small enough for a quick step.
ModelConfig gpu_test_model() { return test_model({97, 64, 2, 4, 2, 6, 48, 16, 0.1, 0.05, 0.01}); }

constexpr int kB = 2, kT = 40;

struct Batch {
    std::vector<int32_t> inputs, targets;
};

Batch random_batch(int V) {
    Rng rng(11, "gpu batch");
    Batch b;
    for (int i = 0; i < kB * kT; ++i) {
        b.inputs.push_back(int32_t(rng.next() % uint64_t(V)));
        b.targets.push_back(int32_t(rng.next() % uint64_t(V)));
    }
    return b;
}

// Each parameter's values rounded to bf16 (what the GPU's working copies hold).
void round_values_to_bf16(ParameterSet& params, Ops& cpu) {
    for (Param& p : params.all()) {
        std::vector<float> v(static_cast<size_t>(p.numel()));
        cpu.copy_to_host(v.data(), p.value);
        for (float& x : v) x = round_bf16(x);
        cpu.copy_from_host(p.value, v.data());
    }
}

struct StepResult {
    double loss = 0, aux = 0;
    std::vector<std::vector<int64_t>> routed;  // [L][E] token-slots per expert
    std::vector<std::vector<float>> grads;     // in params.all() order
};

StepResult one_step(Model& model, Ops& ops, const Batch& batch) {
    poison_grads(model.params());  // an element the backward leaves unwritten stays NaN
    const ForwardResult r = model.forward(batch.inputs.data(), batch.targets.data(), 1.0);
    model.backward(Write::overwrite);
    StepResult s{r.loss, r.aux, {}, {}};
    for (const MoeStats& layer : r.layers) s.routed.push_back(layer.routed);
    for (const Param& p : model.params().all()) {
        std::vector<float> g(static_cast<size_t>(p.numel()));
        ops.copy_to_host(g.data(), p.grad);
        s.grads.push_back(std::move(g));
    }
    return s;
}

double relative_l2(const std::vector<float>& a, const std::vector<float>& ref) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        diff += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
        norm += double(ref[i]) * ref[i];
    }
    return std::sqrt(diff / std::max(norm, 1e-30));
}

void check_step_against_cpu(const ModelConfig& mc) {
    Backends b;
    const Batch batch = random_batch(mc.vocab_size);
    Model cpu_model(mc, b.cpu, Precision(DType::F32), kB, kT);
    cpu_model.params().initialize(7);
    round_values_to_bf16(cpu_model.params(), b.cpu);
    Model gpu_model(mc, b.gpu, b.gpu.training_precision(), kB, kT);
    gpu_model.params().initialize(7);
    const StepResult c = one_step(cpu_model, b.cpu, batch), g = one_step(gpu_model, b.gpu, batch);
    INFO("loss gpu " << g.loss << " cpu " << c.loss << ", aux gpu " << g.aux << " cpu " << c.aux);
    REQUIRE(std::fabs(g.loss - c.loss) <= 2e-3 * std::fabs(c.loss));
    REQUIRE(std::fabs(g.aux - c.aux) <= 1e-2 * std::fabs(c.aux) + 1e-6);
    // A near-tie in a router's scores may send a token elsewhere on the GPU:
    // rare (more than one layer is a routing bug), and it changes the
    // gradient of everything the token's path reaches below, so the
    // parameters of that layer and under it are not compared then.
    int layers_routed_differently = 0, top_flip = -1;
    for (size_t l = 0; l < c.routed.size(); ++l)
        if (g.routed[l] != c.routed[l]) {
            ++layers_routed_differently;
            top_flip = int(l);
        }
    CHECK(layers_routed_differently <= 1);
    size_t i = 0;
    for (const Param& p : cpu_model.params().all()) {
        const double err = relative_l2(g.grads[i], c.grads[i]);
        INFO(p.name << ": relative L2 error " << err);
        // layers.{l}.* is layer l's; the embedding and shared dynamics are under every layer.
        const bool in_layer = p.name.rfind("layers.", 0) == 0;
        const bool below = p.name.rfind("embed.", 0) == 0 || p.name.rfind("dynamics.", 0) == 0;
        const bool under_flip =
            top_flip >= 0 && (below || (in_layer && std::stoi(p.name.substr(7)) <= top_flip));
        if (under_flip)
            WARN(p.name << ": at or under layer " << top_flip
                        << ", which routed differently on the GPU (a near-tie); error " << err);
        else
            CHECK(err <= 5e-2);
        ++i;
    }
}

}  // namespace

TEST_CASE("a GPU step gives the CPU's loss and gradients: learned router, shared dynamics", "[gpu]") {
    check_step_against_cpu(gpu_test_model());
}

TEST_CASE("a GPU step gives the CPU's loss and gradients: token_id router", "[gpu]") {
    ModelConfig m = gpu_test_model();
    m.moe.router = moe::RouterKind::token_id;
    m.moe.top_k = 1;
    m.moe.load_balancing_weight = 0;
    m.moe.z_loss_weight = 0;
    check_step_against_cpu(m);
}

TEST_CASE("a GPU step gives the CPU's loss and gradients: capacity with drops", "[gpu]") {
    ModelConfig m = gpu_test_model();
    m.moe.capacity_factor = 0.75;  // at most 0.75 * N * k / E slots per expert: some are dropped
    check_step_against_cpu(m);
}

TEST_CASE("a GPU step gives the CPU's loss and gradients: dynamics per layer, and off with qk-norm", "[gpu]") {
    ModelConfig per_layer = gpu_test_model();
    per_layer.dynamics.shared = false;
    check_step_against_cpu(per_layer);
    ModelConfig off = gpu_test_model();
    off.dynamics.enabled = false;
    off.qk_norm = true;
    check_step_against_cpu(off);
}

TEST_CASE("a GPU step gives the CPU's loss and gradients: two shared experts", "[gpu]") {
    ModelConfig m = gpu_test_model();
    m.moe.shared_experts = 2;
    m.moe.shared_expert_hidden_size = 24;  // 48 fused rows: whole 16-byte words for cuBLASLt
    check_step_against_cpu(m);
}

TEST_CASE("two GPU steps from the same weights give the same bits", "[gpu]") {
    CudaOps gpu(0);
    const ModelConfig mc = gpu_test_model();
    const Batch batch = random_batch(mc.vocab_size);
    Model model(mc, gpu, gpu.training_precision(), kB, kT);
    model.params().initialize(7);
    const StepResult a = one_step(model, gpu, batch), b = one_step(model, gpu, batch);
    REQUIRE(a.loss == b.loss);
    REQUIRE(a.aux == b.aux);
    for (size_t i = 0; i < a.grads.size(); ++i) REQUIRE(a.grads[i] == b.grads[i]);
}

TEST_CASE("200 steps of the demo model train on the GPU along the CPU's loss curve", "[gpu]") {
    // configs/tiny.yaml's model on the learnable synthetic data of the tests.
    Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml");
    const std::string data = make_data("gpu_curve");
    c.data.train = data + "/train_*.bin";
    c.data.val = "";
    c.data.tokenizer = "none";  // ids of a pattern, not text (as train_fixture.h's small_config)
    c.train.steps = 200;
    c.train.seq_len = 64;
    c.train.micro_batch_size = 4;
    c.optimizer.warmup_steps = 20;
    c.checkpoint.every = 0;
    c.log.every = 50;
    c.model.vocab_size = 16;
    // The CPU's curve is one of many: the training is chaotic (a learning
    // rate a part in a million off puts a run on another trajectory), and
    // runs whose learning rates differ by a few parts in a thousand have
    // 20-step means up to 7.5% apart where the loss falls fastest (steps 40
    // to 85: it depends on when a run leaves its plateau). So the GPU's run is
    // held against up to seven CPU runs, whose learning rates differ by 0 to
    // 3 parts in a thousand, not one. Measured on 17 more CPU runs (the
    // learning rate 0.05% to 0.4% off; eps half or twice as large; weight
    // decay, beta1, beta2 or the clip 1 to 10 parts in 10^4 off): every
    // 20-step mean within 2.6% of one of the seven's, where 2 of the 17
    // missed the 5% of the unperturbed run alone (7.5% at worst). The CPU
    // emulation of the GPU with fast_math.cuh's results at their error bounds
    // (MOE_EMULATED_APPROX=bounds): 1.8% (6.5% from the unperturbed run
    // alone). A learning rate 0.7 times the CPU's: 8.9%. (The curve checks
    // learning, not the model: a run without the dynamics keeps within 0.9%,
    // and only the first 10 steps tell it apart.)
    const std::vector<double> lr_factors = {1.0, 1.001, 0.999, 1.002, 0.998, 1.003, 0.997};
    const auto cpu_run = [&](size_t k) {
        Config on_cpu = c;
        on_cpu.optimizer.lr *= lr_factors[k];
        on_cpu.run.out_dir = data + "/cpu" + (k ? "-" + std::to_string(k) : "");
        CpuOps cpu;
        const TrainSummary run = train(on_cpu, cpu);
        REQUIRE(run.losses.size() == 200);
        return run.losses;
    };
    std::vector<std::vector<double>> cpu_losses = {cpu_run(0)};
    const std::vector<double> sc = cpu_losses[0];  // the unperturbed run
    Config on_gpu = c;
    on_gpu.run.out_dir = data + "/gpu";
    CudaOps gpu(0);
    const TrainSummary sg = train(on_gpu, gpu);
    REQUIRE(sg.losses.size() == 200);
    // The runs start on one curve: each of the first 10 steps within 2% of
    // the unperturbed CPU run's (the emulated GPU: 0.05%).
    for (size_t s = 0; s < 10; ++s) {
        INFO("step " << s + 1 << ": gpu " << sg.losses[s] << " cpu " << sc[s]);
        CHECK(std::fabs(sg.losses[s] - sc[s]) <= 0.02 * sc[s]);
    }
    const auto mean = [](const std::vector<double>& v, size_t from, size_t n) {
        double m = 0;
        for (size_t i = from; i < from + n; ++i) m += v[i] / double(n);
        return m;
    };
    // Every 20-step mean within 5% of some CPU run's mean of the same steps.
    constexpr size_t kWindow = 20;
    const size_t windows = sc.size() - kWindow + 1;
    // For the window from step s: the relative distance of the GPU's mean to
    // the nearest CPU run's, and that run's mean.
    const auto nearest = [&](size_t s) {
        const double g = mean(sg.losses, s, kWindow);
        std::pair<double, double> best{INFINITY, 0};
        for (const std::vector<double>& run : cpu_losses) {
            const double cm = mean(run, s, kWindow);
            best = std::min(best, {std::fabs(g - cm) / cm, cm});
        }
        return best;
    };
    const auto widest = [&] {
        double w = 0;
        for (size_t s = 0; s < windows; ++s) w = std::max(w, nearest(s).first);
        return w;
    };
    // The perturbed runs are made only while some window lies farther than 5%
    // from every run so far (a GPU on the unperturbed run's trajectory needs
    // none): a further run can only bring a window nearer, so the verdict is
    // the one all seven would give.
    while (widest() > 0.05 && cpu_losses.size() < lr_factors.size()) cpu_losses.push_back(cpu_run(cpu_losses.size()));
    for (size_t s = 0; s < windows; ++s) {
        const auto [distance, cpu_mean] = nearest(s);
        INFO("steps " << s + 1 << ".." << s + kWindow << ": mean gpu " << mean(sg.losses, s, kWindow)
                      << ", nearest cpu run " << cpu_mean);
        CHECK(distance <= 0.05);
    }
    // The end within 3% of the unperturbed run's (the six perturbed runs,
    // the 17 above and one a learning rate 10^-6 off: 1.31% at most).
    const size_t last = sc.size() - kWindow;
    const double g_end = mean(sg.losses, last, kWindow), c_end = mean(sc, last, kWindow);
    std::printf("200 steps: last 20 steps' mean loss gpu %.4f, cpu %.4f (first step %.4f / %.4f); "
                "20-step means within %.2f%% of the nearest of %zu cpu runs' (5%% allowed)\n",
                g_end, c_end, sg.losses.front(), sc.front(), 100 * widest(), cpu_losses.size());
    REQUIRE(std::fabs(g_end - c_end) <= 0.03 * c_end);
    REQUIRE(g_end < 0.5 * sg.losses.front());  // it learned
}
