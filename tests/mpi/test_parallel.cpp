// Expert and data parallelism change where the work happens, not the result.
// Every rank runs the whole model as one process too (the reference): for one
// global batch of W micro-batches, a single process accumulating the W of them
// must give the loss and every gradient that W ranks give after the gradient
// averaging, for each layout ep x dp of the world. Run under mpiexec -np 2 and
// 4 (and as a world of one, where it checks the layout of one).
#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "comm/agreement.h"
#include "comm/mpi_communicator.h"
#include "comm/process_groups.h"
#include "engine/train/grad_sync.h"
#include "engine/run/layout_report.h"
#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/io/shards.h"
#include "engine/io/weights_io.h"
#include "engine/io/metrics.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#if MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif
#include "tests/host_values.h"
#include "tests/test_util.h"
#include "tests/test_models.h"

using namespace moe;
using moe::test::host_values;
using moe::test::Variant;

namespace {

constexpr int kB = 2, kT = 6, kSeed = 5;

// The tiny model with 4 experts (so that 1, 2 and 4 ranks split them) and a
// vocabulary large enough for varied token_id routing.
ModelConfig small_model() {
    ModelConfig m = moe::test::tiny_model();
    m.vocab_size = 32;
    m.moe.num_experts = 4;
    return m;
}

const std::vector<Variant>& variants() {
    static const std::vector<Variant> v = {
        {"learned top-2", [](ModelConfig&) {}},
        {"token_id", [](ModelConfig& m) {
             m.moe.router = moe::RouterKind::token_id;
             m.moe.top_k = 1;
         }},
        {"learned top-2 with capacity drops", [](ModelConfig& m) { m.moe.capacity_factor = 0.75; }},
        // A rank's experts' outputs for a token summed before they travel:
        // with three, the order of the sum differs from one process's.
        {"learned top-3", [](ModelConfig& m) { m.moe.top_k = 3; }},
        {"sigmoid scores, group-limited", [](ModelConfig& m) {
             m.moe.score = moe::RouterScore::sigmoid;
             m.moe.z_loss_weight = 0;
             m.moe.groups = 2;
             m.moe.group_limit = 1;
         }},
        // Replicated on every rank: their gradients reduced over the world.
        {"two shared experts", [](ModelConfig& m) {
             m.moe.shared_experts = 2;
             m.moe.shared_expert_hidden_size = 8;  // 16 fused rows: whole 16-byte words for cuBLASLt
         }},
    };
    return v;
}

// The layouts of this world: every ep that divides it and the experts.
std::vector<int> expert_parallel_sizes(int world_size, int num_experts) {
    std::vector<int> eps;
    for (int ep = 1; ep <= world_size; ++ep)
        if (world_size % ep == 0 && num_experts % ep == 0) eps.push_back(ep);
    return eps;
}

// The global batch: W micro-batches of kB x kT tokens, the same on every rank.
struct GlobalBatch {
    std::vector<int32_t> inputs, targets;  // [W * kB * kT]
    const int32_t* in(int w) const { return inputs.data() + size_t(w) * kB * kT; }
    const int32_t* tg(int w) const { return targets.data() + size_t(w) * kB * kT; }
};

GlobalBatch make_batch(int W, int vocab) {
    Rng rng(77);
    GlobalBatch b;
    for (int i = 0; i < W * kB * kT; ++i) {
        b.inputs.push_back(int32_t(rng.next() % uint64_t(vocab)));
        b.targets.push_back(int32_t(rng.next() % uint64_t(vocab)));
    }
    return b;
}

// Perturbs the 1-D parameters (norms, mu, biases) away from their constant
// init, the same on every rank, so their gradients are generic.
void perturb(ParameterSet& params) {
    Ops& ops = params.ops();
    for (Param& p : params.all()) {
        if (p.shape.size() != 1) continue;
        Rng rng(std::hash<std::string>{}(p.name));
        std::vector<double> v = host_values(ops, p.value);
        for (double& x : v) x += 0.1 * rng.normal();
        if (p.value.dtype == DType::F64) {
            ops.copy_from_host(p.value, v.data());
        } else {
            const std::vector<float> f(v.begin(), v.end());
            ops.copy_from_host(p.value, f.data());
        }
    }
    params.refresh_work();
}

// |got - want| <= rtol * max|want| over the tensor (zero tensors: exactly 0).
void check_close(const std::string& what, const std::vector<double>& got, int64_t got_start,
                 const std::vector<double>& want, int64_t want_start, int64_t n, double rtol) {
    double scale = 0, worst = 0;
    int64_t worst_at = 0;
    for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(want[size_t(want_start + i)]));
    for (int64_t i = 0; i < n; ++i) {
        const double d = std::fabs(got[size_t(got_start + i)] - want[size_t(want_start + i)]);
        if (d > worst) worst = d, worst_at = i;
    }
    INFO(what << ": max |difference| " << worst << " at element " << worst_at << ", max |reference| " << scale);
    CHECK(worst <= rtol * scale);
}

struct Reference {
    double loss = 0, aux = 0;
};

// One process, all experts, accumulating the W micro-batches: what a step of
// W ranks must equal.
Reference single_process_step(Model& model, const GlobalBatch& batch, int W) {
    Reference r;
    for (int w = 0; w < W; ++w) {
        const ForwardResult f = model.forward(batch.in(w), batch.tg(w), 1.0 / W);
        r.loss += f.loss / W;
        r.aux += f.aux / W;
        model.backward(w == 0 ? Write::overwrite : Write::add);
    }
    return r;
}

void check_layout_matches_one_process(const ModelConfig& cfg, Ops& ops, const Precision& precision, double rtol,
                                      int ep) {
    ProcessGroups groups = make_process_groups(ep);
    const int W = groups.world_size(), rank = groups.world_rank();
    const GlobalBatch batch = make_batch(W, cfg.vocab_size);

    Model reference(cfg, ops, precision, kB, kT);
    reference.params().initialize(kSeed);
    perturb(reference.params());
    const Reference want = single_process_step(reference, batch, W);

    Model model(cfg, ops, precision, kB, kT, {groups.ep.get()});
    ParameterSet& params = model.params();
    params.initialize(kSeed);
    perturb(params);
    const ForwardResult f = model.forward(batch.in(rank), batch.tg(rank), 1.0);
    // Gradients reduced layer by layer as the backward finishes them.
    GradientReducer reducer(params, &groups);
    model.backward(Write::overwrite, reducer.bucket_ready());
    if (cfg.moe.capacity_factor) REQUIRE(f.dropped() > 0);
    std::vector<double> losses = {f.loss, f.aux};
    groups.world->all_reduce(losses.data(), 2, DType::F64, ReduceOp::Sum);
    reducer.finish();

    CHECK(std::fabs(losses[0] / W - want.loss) <= rtol * want.loss);
    CHECK(std::fabs(losses[1] / W - want.aux) <= rtol * std::max(want.aux, 1e-3));
    for (const Param& p : params.all()) {
        const Param& r = reference.params().find(p.name);
        // An expert stack holds this rank's experts: compare with theirs.
        const int64_t start = p.is_expert_stack() ? p.expert_offset * (p.numel() / p.shape[0]) : 0;
        REQUIRE(r.numel() >= start + p.numel());
        check_close(p.name + " gradient", host_values(ops, p.grad), 0, host_values(ops, r.grad), start, p.numel(),
                    rtol);
    }
    // Every rank reports the same norm, the norm of the reference's gradient.
    const double norm = global_grad_norm(params, &groups);
    const double want_norm = global_grad_norm(reference.params(), nullptr);
    CHECK(std::fabs(norm - want_norm) <= rtol * want_norm);
}

}  // namespace

// Double precision: only the order of the sums differs, so agreement is to
// rounding. Single precision, the engine's training dtype: relative 1e-5 of
// each tensor's largest element (fp32's epsilon is 1.2e-7; a sum of W partial
// gradients in another order moves the last few bits).
TEST_CASE("each ep x dp layout gives the loss and gradients of one process", "[mpi]") {
    const int world_size = MpiCommunicator::world()->size();
    for (const Variant& v : variants()) {
        ModelConfig cfg = small_model();
        v.apply(cfg);
        for (int ep : expert_parallel_sizes(world_size, cfg.moe.num_experts)) {
            for (const auto& [dtype, rtol] : {std::pair{DType::F64, 1e-11}, std::pair{DType::F32, 1e-5}}) {
                INFO(v.name << ", expert_parallel " << ep << " x data parallel " << world_size / ep << ", "
                            << (dtype == DType::F64 ? "F64" : "F32"));
                CpuOps ops;
                check_layout_matches_one_process(cfg, ops, dtype, rtol, ep);
            }
        }
    }
}

#if MOE_HAVE_CUDA
// All ranks on one GPU (NCCL refuses that), device buffers staged through
// host memory by the MPI communicator. Hidden tag: ctest runs it by name
// where there is a GPU (label gpu). The tiny model with head size 16 (the
// smallest the CUDA attention takes). Tolerance: bf16 compute; a layout
// changes the rows each expert GEMM sees and so cuBLAS's summation, which a
// bf16 rounding can turn into one ulp (2^-8) here and there: 2% of each
// tensor's largest element.
TEST_CASE("on one GPU, each ep layout over staged MPI gives one process's loss and gradients", "[.][gpu]") {
    const int world_size = MpiCommunicator::world()->size();
    CudaOps ops(0);
    for (const Variant& v : variants()) {
        ModelConfig cfg = small_model();
        cfg.hidden_size = 32;
        cfg.num_heads = 2;
        cfg.moe.expert_hidden_size = 16;  // rows of whole 16-byte words for cuBLASLt
        cfg.dynamics.controller_size = 8;
        v.apply(cfg);
        for (int ep : expert_parallel_sizes(world_size, cfg.moe.num_experts)) {
            INFO(v.name << ", expert_parallel " << ep << " x data parallel " << world_size / ep << " on one GPU");
            check_layout_matches_one_process(cfg, ops, ops.training_precision(), 2e-2, ep);
        }
    }
}
#endif

namespace {

// Slots of a micro-batch that each rank of the EP group holds the expert of,
// with the token_id router (expert = id mod E) and capacity applied in token
// order per expert.
std::vector<int64_t> slots_per_ep_rank(const int32_t* ids, int N, int E, int ep_size, double capacity_factor) {
    const int64_t cap = capacity_factor > 0 ? int64_t(std::ceil(capacity_factor * N / E)) : N;
    std::vector<int64_t> kept(size_t(E), 0), per_rank(size_t(ep_size), 0);
    for (int t = 0; t < N; ++t) {
        const int e = ids[t] % E;
        if (kept[size_t(e)] >= cap) continue;
        ++kept[size_t(e)];
        ++per_rank[size_t(e / (E / ep_size))];
    }
    return per_rank;
}

}  // namespace

// Each token vector crosses to another rank once (top-1: one expert), with
// its weight and the index of its packed row, and its expert's weighted
// output comes back once; the backward moves the same rows the other way (the
// token_id router's weights have no gradient to return); the only other
// traffic is the counts. tests/mpi/test_dispatcher.cpp counts top-k.
TEST_CASE("all-to-all moves each token vector once per remote rank", "[mpi]") {
    const int world_size = MpiCommunicator::world()->size();
    for (const double capacity : {0.0, 0.5}) {
        ModelConfig cfg = small_model();
        cfg.moe.router = moe::RouterKind::token_id;
        cfg.moe.top_k = 1;
        if (capacity > 0) cfg.moe.capacity_factor = capacity;
        for (int ep : expert_parallel_sizes(world_size, cfg.moe.num_experts)) {
            INFO("expert_parallel " << ep << ", capacity_factor " << capacity);
            CpuOps ops;
            ProcessGroups groups = make_process_groups(ep);
            const GlobalBatch batch = make_batch(groups.world_size(), cfg.vocab_size);
            Model model(cfg, ops, DType::F32, kB, kT, {groups.ep.get()});
            model.params().initialize(kSeed);
            const int32_t* ids = batch.in(groups.world_rank());
            const int64_t E = cfg.moe.num_experts, L = cfg.num_layers, H = cfg.hidden_size;
            // Rows this rank sends to its peers' experts, and rows its peers
            // send to its experts (which their outputs go back as).
            const int me = groups.ep_rank(), group_start = groups.world_rank() - me;
            int64_t sent = 0, received = 0;
            for (int q = 0; q < ep; ++q) {
                const std::vector<int64_t> to = slots_per_ep_rank(batch.in(group_start + q), kB * kT, int(E), ep, capacity);
                for (int d = 0; d < ep; ++d) {
                    if (q == me && d != me) sent += to[size_t(d)];
                    if (q != me && d == me) received += to[size_t(d)];
                }
            }
            if (ep > 1) REQUIRE(sent > 0);
            if (ep > 1) REQUIRE(received > 0);
            // int32 rows per expert and packed rows, to each peer
            const int64_t counts_bytes = (ep - 1) * (E / ep + 1) * 4;
            const int64_t index_bytes = sent * (4 + 4);            // int32 packed row and F32 weight of each row sent
            const int64_t rows_bytes = (sent + received) * H * 4;  // F32 rows: dispatch, then combine

            groups.ep->reset_bytes_sent_all_to_all();
            model.forward(ids, batch.tg(groups.world_rank()), 1.0);
            CHECK(groups.ep->bytes_sent_all_to_all() == L * (counts_bytes + index_bytes + rows_bytes));
            model.backward(Write::overwrite);
            CHECK(groups.ep->bytes_sent_all_to_all() == L * (counts_bytes + index_bytes + 2 * rows_bytes));
        }
    }
}

namespace {

// Shards of random tokens, written once by rank 0 for the whole world.
std::string write_training_shards(Communicator& world, int vocab) {
    const std::string dir = std::string(MOE_BINARY_DIR) + "/test_data/mpi_parallel/shards";
    if (world.rank() == 0) {
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir);
        Rng rng(3);
        for (int s = 0; s < 2; ++s) {
            std::vector<uint32_t> tokens(3000);
            // A learnable pattern (every other token repeats) so the loss falls.
            for (size_t i = 0; i < tokens.size(); ++i)
                tokens[i] = i % 2 ? tokens[i - 1] : uint32_t(rng.next() % uint64_t(vocab));
            write_shard(dir + "/train_" + std::to_string(s) + ".bin", tokens, 1);
        }
    }
    world.barrier();
    return dir;
}

Config training_config(const std::string& shards, int micro_batch, int accum, int ep, const std::string& out_dir) {
    Config c;
    c.model = small_model();
    c.model.init_std = 0.02;
    c.data.train = shards + "/train_*.bin";
    c.data.tokenizer = "none";  // random ids, not text
    c.train.seq_len = 16;
    c.train.micro_batch_size = micro_batch;
    c.train.grad_accum_steps = accum;
    c.train.steps = 20;
    c.optimizer.lr = 1e-2;
    c.optimizer.warmup_steps = 2;
    c.eval.every = 0;
    c.log.every = 1000;
    c.run.seed = 11;
    c.run.out_dir = out_dir;
    c.parallel.expert_parallel = ep;
    return c;
}

}  // namespace

// Training runs in fp32: the layouts' curves agree to relative 1e-4 over 20
// steps (the gradients differ in the last bits, and AdamW carries that on).
// All ranks of these tests share one host: the GPU each takes (its local
// rank) is its world rank.
TEST_CASE("a rank's local rank counts the ranks before it on its node", "[mpi]") {
    std::unique_ptr<Communicator> world = MpiCommunicator::world();
    REQUIRE(local_rank(*world) == world->rank());
}

TEST_CASE("20 training steps give one process's loss curve", "[mpi]") {
    spdlog::set_level(spdlog::level::warn);  // every rank trains a reference: keep their logs quiet
    auto world = MpiCommunicator::world();
    const int W = world->size(), rank = world->rank();
    const std::string shards = write_training_shards(*world, small_model().vocab_size);
    const std::string out = std::string(MOE_BINARY_DIR) + "/test_data/mpi_parallel/";
    // Fresh run directories (a run refuses to start over another's checkpoints).
    if (rank == 0)
        for (const char* run : {"single-rank", "ep"})
            for (int i = 0; i <= W; ++i) std::filesystem::remove_all(out + run + std::to_string(i));
    world->barrier();
    CpuOps ops;

    // The reference: one process reading the W micro-batches of each step in turn.
    const TrainSummary want =
        train(training_config(shards, 4, W, 1, out + "single-rank" + std::to_string(rank)), ops);
    REQUIRE(want.losses.size() == 20);
    CHECK(want.losses.back() < 0.95 * want.losses.front());  // it learns

    for (int ep : expert_parallel_sizes(W, small_model().moe.num_experts)) {
        INFO("expert_parallel " << ep << " x data parallel " << W / ep);
        ProcessGroups groups = make_process_groups(ep);
        const TrainSummary got =
            train(training_config(shards, 4, 1, ep, out + "ep" + std::to_string(ep)), ops, {}, &groups);
        REQUIRE(got.losses.size() == want.losses.size());
        for (size_t s = 0; s < got.losses.size(); ++s) {
            INFO("step " << s + 1 << ": " << got.losses[s] << " vs one process " << want.losses[s]);
            CHECK(std::fabs(got.losses[s] - want.losses[s]) <= 1e-4 * want.losses[s]);
        }
        // The expert telemetry counts every rank's slots: the one process's.
        if (rank == 0) {
            const auto telemetry = [](const std::string& run) {
                std::vector<MetricsLine> lines;
                for (MetricsLine& line : read_metrics(run + "/metrics.jsonl"))
                    if (line[1].first == "interval_steps") lines.push_back(std::move(line));
                return lines;
            };
            const std::vector<MetricsLine> one = telemetry(out + "single-rank0");
            const std::vector<MetricsLine> many = telemetry(out + "ep" + std::to_string(ep));
            REQUIRE(one.size() == many.size());
            REQUIRE(!one.empty());
            for (size_t i = 0; i < one.size(); ++i) {
                CHECK(many[i][0].second == one[i][0].second);  // step
                CHECK(many[i][3].second == one[i][3].second);  // layer_slots, exactly
                const auto& a = many[i][2].second.rows;  // expert_share
                const auto& b = one[i][2].second.rows;
                REQUIRE(a.size() == b.size());
                for (size_t l = 0; l < a.size(); ++l)
                    for (size_t e = 0; e < a[l].size(); ++e) CHECK(std::fabs(a[l][e] - b[l][e]) <= 0.01);
            }
        }
        world->barrier();
    }
}

// Every rank updates the bias from the same all-reduced loads: each layout
// keeps the bias one process keeps (sums of integer counts: exact while the
// layouts choose the same experts, which their agreeing losses show).
TEST_CASE("the expert bias of each layout is one process's bias bit for bit", "[mpi]") {
    spdlog::set_level(spdlog::level::warn);
    auto world = MpiCommunicator::world();
    const int W = world->size(), rank = world->rank();
    const std::string shards = write_training_shards(*world, small_model().vocab_size);
    const std::string out = std::string(MOE_BINARY_DIR) + "/test_data/mpi_expert_bias/";
    if (rank == 0)
        for (const char* run : {"single-rank", "ep"})
            for (int i = 0; i <= W; ++i) std::filesystem::remove_all(out + run + std::to_string(i));
    world->barrier();
    const auto biased = [](Config c) {
        c.model.moe.expert_bias_rate = 0.01;
        c.model.moe.load_balancing_weight = 0;
        c.train.steps = 8;
        return c;
    };
    const int E = small_model().moe.num_experts;
    const auto bias_of = [&](const std::string& run, int parts) {  // from part 0, which holds the replicated tensors
        SafetensorsFile f(run + "/checkpoints/step-00000008/model-00000-of-0000" + std::to_string(parts) + ".safetensors");
        std::vector<float> b(static_cast<size_t>(2 * E));
        for (int l = 0; l < 2; ++l)
            f.read("layers." + std::to_string(l) + ".moe.router.expert_bias", "F32", {E}, b.data() + l * E);
        return b;
    };
    CpuOps ops;
    const std::string one = out + "single-rank" + std::to_string(rank);
    const TrainSummary want = train(biased(training_config(shards, 4, W, 1, one)), ops);
    const std::vector<float> want_bias = bias_of(one, 1);
    CHECK(want_bias != std::vector<float>(want_bias.size(), 0.f));
    for (int ep : expert_parallel_sizes(W, E)) {
        INFO("expert_parallel " << ep << " x data parallel " << W / ep);
        ProcessGroups groups = make_process_groups(ep);
        const std::string run = out + "ep" + std::to_string(ep);
        const TrainSummary got = train(biased(training_config(shards, 4, 1, ep, run)), ops, {}, &groups);
        REQUIRE(got.losses.size() == want.losses.size());
        for (size_t s = 0; s < got.losses.size(); ++s) CHECK(std::fabs(got.losses[s] - want.losses[s]) <= 1e-4 * want.losses[s]);
        if (rank == 0) CHECK(bias_of(run, ep) == want_bias);
        world->barrier();
    }
}

// balance_scope global_batch counts every rank's slots: the layouts of one
// world (the same data parallelism) give the same curve, and with more than
// one rank it is not the per-micro-batch loss's curve.
TEST_CASE("global-batch balancing gives each layout of a world the same curve", "[mpi]") {
    spdlog::set_level(spdlog::level::warn);
    auto world = MpiCommunicator::world();
    const int W = world->size(), rank = world->rank();
    const std::string shards = write_training_shards(*world, small_model().vocab_size);
    const std::string out = std::string(MOE_BINARY_DIR) + "/test_data/mpi_balance_scope/";
    if (rank == 0) std::filesystem::remove_all(out);
    world->barrier();
    const auto config = [&](int ep, BalanceScope scope, const std::string& name) {
        Config c = training_config(shards, 4, 1, ep, out + name);
        c.model.moe.load_balancing_weight = 0.5;  // large: the scope shows in the curve
        c.model.moe.balance_scope = scope;
        c.train.steps = 8;
        return c;
    };
    CpuOps ops;
    std::vector<double> first;  // ep = 1's curve
    for (int ep : expert_parallel_sizes(W, small_model().moe.num_experts)) {
        INFO("expert_parallel " << ep << " x data parallel " << W / ep);
        ProcessGroups groups = make_process_groups(ep);
        const TrainSummary got =
            train(config(ep, BalanceScope::global_batch, "global-ep" + std::to_string(ep)), ops, {}, &groups);
        if (first.empty()) {
            first = got.losses;
            const TrainSummary micro =
                train(config(ep, BalanceScope::micro_batch, "micro-ep" + std::to_string(ep)), ops, {}, &groups);
            if (W > 1) CHECK(micro.losses.back() != got.losses.back());
            else CHECK(micro.losses == got.losses);
        }
        REQUIRE(got.losses.size() == first.size());
        for (size_t s = 0; s < first.size(); ++s) CHECK(std::fabs(got.losses[s] - first[s]) <= 1e-4 * first[s]);
        world->barrier();
    }
}

// Inputs that shape the run but live on each node (files at the same path)
// must be the same on every rank: ranks that read other data, or start from
// other weights, would train several models in one job. Refused at start.
TEST_CASE("ranks that read other training data or start from other weights are refused", "[mpi]") {
    spdlog::set_level(spdlog::level::warn);
    auto world = MpiCommunicator::world();
    const int W = world->size(), rank = world->rank();
    if (W == 1) return;  // a world of one agrees with itself
    const std::string shards = write_training_shards(*world, small_model().vocab_size);
    const std::string out = std::string(MOE_BINARY_DIR) + "/test_data/mpi_parallel/disagree-";
    CpuOps ops;
    const auto refusal = [&](Config c, const TrainOptions& opts) {
        if (rank == 0) std::filesystem::remove_all(c.run.out_dir);
        world->barrier();
        ProcessGroups groups = make_process_groups(1);
        try {
            train(c, ops, opts, &groups);
        } catch (const JobError& e) {
            return std::string(e.what());
        }
        return std::string("not refused");
    };

    SECTION("the last rank's shards differ") {
        Config c = training_config(shards, 2, 1, 1, out + "data");
        if (rank == W - 1) {  // another copy of the data, one shard shorter
            const std::string mine = shards + "-rank" + std::to_string(rank);
            std::filesystem::remove_all(mine);
            std::filesystem::create_directories(mine);
            std::filesystem::copy(shards + "/train_0.bin", mine + "/train_0.bin");
            c.data.train = mine + "/train_*.bin";
        }
        CHECK(refusal(c, {}) == "ranks were started with different training data (data.train's shards by name and "
                                "size): rank(s) " + std::to_string(W - 1) + " differ from rank 0; start every rank "
                                "with the same training data (data.train's shards by name and size)");
    }
    SECTION("the last rank's --init-from weights differ") {
        Config c = training_config(shards, 2, 1, 1, out + "weights");
        const std::string weights = out + "weights-" + std::to_string(rank) + ".safetensors";
        Model model(c.model, ops, DType::F32, 1, 1);
        model.params().initialize(rank == W - 1 ? 99 : 7);
        save_tensors(weights, model.params().named(ParameterSet::Slot::Value), ops);
        TrainOptions opts;
        opts.init_from = weights;
        CHECK(test::contains(refusal(c, opts), "ranks were started with different replicated weights (of --init-from, "
                                               "the checkpoint or the initialization): rank(s) " +
                                                   std::to_string(W - 1) + " differ from rank 0"));
    }
}

namespace {

// Every tensor of a run directory's newest checkpoint (all its parts), by name.
std::map<std::string, std::vector<float>> checkpoint_tensors(const std::string& run_dir) {
    const CheckpointInfo info = read_checkpoint_info(latest_checkpoint(run_dir));
    std::map<std::string, std::vector<float>> out;
    for (const CheckpointFile& f : info.files) {
        const SafetensorsFile file(info.dir + "/" + f.name);
        for (const std::string& name : file.names()) {
            const auto& shape = file.info(name).shape;
            int64_t n = 1;
            for (int64_t d : shape) n *= d;
            std::vector<float>& v = out[f.name.substr(0, f.name.find('-')) + ":" + name];
            v.resize(size_t(n));
            file.read(name, "F32", shape, v.data());
        }
    }
    return out;
}

}  // namespace

// ZeRO-1 moves where the optimizer state lives, not what it computes. The
// same run with and without it: each loss, and every weight and moment of the
// final checkpoint, agree to fp32 rounding. Not to the bit: the gradient sums
// are reduce-scattered instead of all-reduced (MPI may add the ranks in
// another order) and the norm adds chunks instead of whole tensors.
TEST_CASE("ZeRO-1 trains the model and moments of the unsplit run, each layout and router", "[mpi]") {
    spdlog::set_level(spdlog::level::warn);
    auto world = MpiCommunicator::world();
    const int W = world->size(), rank = world->rank();
    if (W == 1) return;  // nothing to split
    const std::string shards = write_training_shards(*world, small_model().vocab_size);
    const std::string out = std::string(MOE_BINARY_DIR) + "/test_data/mpi_parallel/zero-";
    CpuOps ops;
    for (const Variant& variant : variants()) {
        for (int ep : expert_parallel_sizes(W, small_model().moe.num_experts)) {
            INFO(variant.name << ", expert_parallel " << ep << " x data parallel " << W / ep);
            std::map<bool, TrainSummary> runs;
            std::map<bool, std::string> dirs;
            for (bool split : {false, true}) {
                Config c = training_config(shards, 2, 1, ep, out + std::to_string(ep) + (split ? "-split" : "-whole"));
                variant.apply(c.model);
                c.train.steps = 8;
                c.checkpoint.every = 8;
                c.parallel.shard_optimizer = split;
                if (rank == 0) std::filesystem::remove_all(c.run.out_dir);
                world->barrier();
                ProcessGroups groups = make_process_groups(ep);
                runs[split] = train(c, ops, {}, &groups);
                dirs[split] = c.run.out_dir;
            }
            REQUIRE(runs[true].losses.size() == 8);
            for (size_t s = 0; s < 8; ++s) {
                INFO("step " << s + 1 << ": " << runs[true].losses[s] << " vs " << runs[false].losses[s]);
                CHECK(std::fabs(runs[true].losses[s] - runs[false].losses[s]) <= 1e-6 * runs[false].losses[s]);
            }
            if (rank != 0) continue;
            const auto whole = checkpoint_tensors(dirs[false]), split = checkpoint_tensors(dirs[true]);
            REQUIRE(whole.size() == split.size());
            for (const auto& [name, want] : whole) {
                INFO(name);
                const std::vector<float>& got = split.at(name);
                REQUIRE(got.size() == want.size());
                float largest = 0, worst = 0;
                for (size_t i = 0; i < want.size(); ++i) {
                    largest = std::max(largest, std::fabs(want[i]));
                    worst = std::max(worst, std::fabs(got[i] - want[i]));
                }
                CHECK(worst <= 1e-5f * largest);
            }
        }
    }
}

// Recomputation under expert parallelism: the recomputed forward exchanges
// its tokens again, and the gradients are the bits of the run that kept them.
TEST_CASE("recomputed blocks exchange their tokens again and give the same gradients", "[mpi]") {
    const int W = MpiCommunicator::world()->size();
    for (const Variant& v : variants()) {
        INFO(v.name);
        ModelConfig cfg = small_model();
        v.apply(cfg);
        ProcessGroups groups = make_process_groups(W);
        const GlobalBatch batch = make_batch(W, cfg.vocab_size);
        CpuOps ops;
        std::vector<std::vector<double>> kept;
        for (Recompute r : {Recompute::none, Recompute::experts, Recompute::full}) {
            ModelOptions options;
            options.ep = groups.ep.get();
            options.recompute = r;
            Model model(cfg, ops, DType::F32, kB, kT, options);
            model.params().initialize(kSeed);
            model.forward(batch.in(groups.world_rank()), batch.tg(groups.world_rank()), 1.0);
            model.backward(Write::overwrite);
            std::vector<std::vector<double>> grads;
            for (const Param& p : model.params().all()) grads.push_back(host_values(ops, p.grad));
            if (r == Recompute::none) kept = grads;
            else CHECK(grads == kept);
        }
    }
}
