// Expert and data parallelism change where the work happens, not the result.
// Every rank runs the whole model as one process too (the reference): for one
// global batch of W micro-batches, a single process accumulating the W of them
// must give the loss and every gradient that W ranks give after the gradient
// averaging, for each layout ep x dp of the world. Run under mpiexec -np 2 and
// 4 (and as a world of one, where it checks the layout of one).
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "comm/mpi_communicator.h"
#include "comm/process_groups.h"
#include "engine/grad_sync.h"
#include "engine/model.h"
#include "engine/rng.h"
#include "engine/shards.h"
#include "engine/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/test_util.h"
#include "tests/tiny_model.h"

using namespace moe;
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
             m.moe.router = "token_id";
             m.moe.top_k = 1;
         }},
        {"learned top-2 with capacity drops", [](ModelConfig& m) { m.moe.capacity_factor = 0.75; }},
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
    for (Param& p : params.all()) {
        if (p.shape.size() != 1) continue;
        Rng rng(std::hash<std::string>{}(p.name));
        for (int64_t i = 0; i < p.numel(); ++i) {
            const double d = 0.1 * rng.normal();
            if (p.value.dtype == DType::F64)
                p.value.ptr<double>()[i] += d;
            else
                p.value.ptr<float>()[i] += float(d);
        }
    }
}

double element(const Tensor& t, int64_t i) {
    return t.dtype == DType::F64 ? t.ptr<double>()[i] : double(t.ptr<float>()[i]);
}

// |got - want| <= rtol * max|want| over the tensor (zero tensors: exactly 0).
void check_close(const std::string& what, const Tensor& got, int64_t got_start, const Tensor& want,
                 int64_t want_start, int64_t n, double rtol) {
    double scale = 0, worst = 0;
    int64_t worst_at = 0;
    for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(element(want, want_start + i)));
    for (int64_t i = 0; i < n; ++i) {
        const double d = std::fabs(element(got, got_start + i) - element(want, want_start + i));
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
    model.params().zero_grads();
    Reference r;
    for (int w = 0; w < W; ++w) {
        const ForwardResult f = model.forward(batch.in(w), batch.tg(w));
        r.loss += f.loss / W;
        r.aux += f.aux / W;
        model.backward(1.0 / W);
    }
    return r;
}

void check_layout_matches_one_process(const ModelConfig& cfg, DType dtype, double rtol, int ep) {
    CpuOps ops;
    ProcessGroups groups = make_process_groups(ep);
    const int W = groups.world_size(), rank = groups.world_rank();
    const GlobalBatch batch = make_batch(W, cfg.vocab_size);

    Model reference(cfg, ops, dtype, kB, kT);
    reference.params().initialize(kSeed);
    perturb(reference.params());
    const Reference want = single_process_step(reference, batch, W);

    Model model(cfg, ops, dtype, kB, kT, groups.ep.get());
    ParameterSet& params = model.params();
    params.initialize(kSeed);
    perturb(params);
    params.zero_grads();
    const ForwardResult f = model.forward(batch.in(rank), batch.tg(rank));
    model.backward(1.0);
    if (cfg.moe.capacity_factor) REQUIRE(f.dropped > 0);
    std::vector<double> losses = {f.loss, f.aux};
    groups.world->all_reduce(losses.data(), 2, DType::F64, ReduceOp::Sum);
    average_gradients(params, &groups);

    CHECK(std::fabs(losses[0] / W - want.loss) <= rtol * want.loss);
    CHECK(std::fabs(losses[1] / W - want.aux) <= rtol * std::max(want.aux, 1e-3));
    for (const Param& p : params.all()) {
        const Param& r = reference.params().find(p.name);
        // An expert stack holds this rank's experts: compare with theirs.
        const int64_t start = p.is_expert_stack() ? p.expert_offset * (p.numel() / p.shape[0]) : 0;
        REQUIRE(r.numel() >= start + p.numel());
        check_close(p.name + " gradient", p.grad, 0, r.grad, start, p.numel(), rtol);
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
                check_layout_matches_one_process(cfg, dtype, rtol, ep);
            }
        }
    }
}

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

// Each token vector crosses to another rank once per chosen expert there, and
// its expert's output comes back once; the backward moves the same rows the
// other way; the only other traffic is the per-expert counts.
TEST_CASE("all-to-all moves each token vector once per remote expert", "[mpi]") {
    const int world_size = MpiCommunicator::world()->size();
    for (const double capacity : {0.0, 0.5}) {
        ModelConfig cfg = small_model();
        cfg.moe.router = "token_id";
        cfg.moe.top_k = 1;
        if (capacity > 0) cfg.moe.capacity_factor = capacity;
        for (int ep : expert_parallel_sizes(world_size, cfg.moe.num_experts)) {
            INFO("expert_parallel " << ep << ", capacity_factor " << capacity);
            CpuOps ops;
            ProcessGroups groups = make_process_groups(ep);
            const GlobalBatch batch = make_batch(groups.world_size(), cfg.vocab_size);
            Model model(cfg, ops, DType::F32, kB, kT, groups.ep.get());
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
            const int64_t counts_bytes = (ep - 1) * (E / ep) * 4;  // int32 rows per expert, to each peer
            const int64_t rows_bytes = (sent + received) * H * 4;  // F32 rows: dispatch, then combine

            groups.ep->reset_bytes_sent_all_to_all();
            model.params().zero_grads();
            model.forward(ids, batch.tg(groups.world_rank()));
            CHECK(groups.ep->bytes_sent_all_to_all() == L * (counts_bytes + rows_bytes));
            model.backward(1.0);
            CHECK(groups.ep->bytes_sent_all_to_all() == L * (counts_bytes + 2 * rows_bytes));
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
    }
}
