// moe-bench: training speed of a config on synthetic tokens. Warm-up steps,
// then timed steps (forward, backward, gradient averaging, norm, AdamW: a
// whole training step); prints step time, tokens/s, model TFLOP/s and MFU by
// MODEL.md's count, device memory, and a second pass timing each phase.
// Runs as one process or under mpirun (expert and data parallel as in
// training); with several ranks it also prints the all-to-all volume and time.
// On one GPU, --estimate-ep N turns the measured step and phases into the step
// time the experts split over N GPUs of one node would take (engine/ep_estimate.h).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "comm/agreement.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#include "comm/process_groups.h"
#include "engine/run/backend.h"
#include "engine/config/config.h"
#include "tools/ep_estimate.h"
#include "engine/model/flops.h"
#include "engine/train/grad_sync.h"
#include "engine/model/model.h"
#include "engine/train/optimizer.h"
#include "engine/train/trainer.h"
#include "engine/params/rng.h"
#include "engine/run/trace_range.h"
#include "tools/tool_args.h"
#if MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace {

constexpr const char* kProgram = "moe-bench";

const char* kUsage =
    "usage: moe-bench --config FILE [--steps N] [--warmup N] [--phase-steps N] [--no-overlap]\n"
    "                 [--estimate-ep N [--a2a-gbps X] [--allreduce-gbps Y]] [--gemm-candidates N]\n"
    "                 [--set key=value ...]\n"
    "  Trains FILE's model on random tokens: N timed steps after the warm-up, then\n"
    "  --phase-steps steps timed phase by phase (0: skip). Under mpirun the ranks\n"
    "  split the experts as parallel.expert_parallel says; gradients are all-reduced\n"
    "  layer by layer during the backward, or after it with --no-overlap.\n"
    "  --estimate-ep N (one process, phases timed): the step with the experts split\n"
    "  over N GPUs of one node, from this run's times and the node's all-to-all and\n"
    "  all-reduce bus bandwidths in GB/s (default 370 and 480: NVLink 4 under NCCL).\n"
    "  --gemm-candidates N (one process, CUDA): last, each GEMM shape the steps\n"
    "  planned timed with cuBLASLt's N best-ranked algorithms, and what a step's\n"
    "  GEMMs would take with each shape's fastest.\n";

struct Args {
    moe::ConfigFlags config;
    int steps = 20, warmup = 3, phase_steps = 5;
    bool overlap = true;
    int estimate_ep = 0;
    int gemm_candidates = 0;
    moe::NodeLinks links;
};

Args parse(int argc, char** argv) {
    Args a;
    moe::ToolArgs args(kProgram, kUsage, argc, argv);
    while (args.next()) {
        const std::string& arg = args.arg();
        if (args.config_flag(a.config)) continue;
        if (arg == "--steps") a.steps = int(args.integer(1));
        else if (arg == "--warmup") a.warmup = int(args.integer(0));
        else if (arg == "--phase-steps") a.phase_steps = int(args.integer(0));
        else if (arg == "--no-overlap") a.overlap = false;
        else if (arg == "--estimate-ep") a.estimate_ep = int(args.integer(2));
        else if (arg == "--a2a-gbps") a.links.all_to_all_gbps = args.number(0, false);
        else if (arg == "--allreduce-gbps") a.links.all_reduce_gbps = args.number(0, false);
        else if (arg == "--gemm-candidates") a.gemm_candidates = int(args.integer(2));
        else args.fail_with_usage("unknown argument '" + arg + "'");
    }
    args.require_config(a.config);
    if (a.estimate_ep && a.phase_steps == 0)
        args.fail_with_usage("--estimate-ep needs the phase pass: give --phase-steps 1 or more");
    return a;
}

double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The step at ep = args.estimate_ep from this one-GPU run: the timed mean
// step, split as the phase pass split its time.
void print_ep_estimate(const Args& args, const moe::Model& model, const moe::PhaseTimes& phases, double step_s,
                       double tokens) {
    double total = 0;
    for (double s : phases.seconds) total += s;
    const auto share = [&](moe::Phase p) { return phases.seconds[size_t(p)] / total; };
    const moe::OneGpuStep one{step_s, step_s * share(moe::Phase::Experts), step_s * share(moe::Phase::Optimizer),
                              tokens};
    double expert_params = 0;
    for (const moe::Param& p : model.params().all())
        if (p.is_expert_stack()) expert_params += double(p.numel());
    const double expert_share = expert_params / double(model.params().numel());
    const int ep = args.estimate_ep;
    const moe::ModelConfig& mc = model.config();
    const double tail_bytes = double(moe::tail_reduce_bytes(model));
    std::printf("ep %d estimate (one node of %d GPUs, dp 1, each rank a micro-batch like this one; all-to-all %.0f "
                "GB/s, all-reduce %.0f GB/s bus bandwidth; %.0f bytes a token sent to other GPUs, %.1f MiB "
                "of gradients all-reduced after the backward)\n",
                ep, ep, args.links.all_to_all_gbps, args.links.all_reduce_gbps,
                moe::all_to_all_bytes_per_token(mc, ep) * (ep - 1) / ep, tail_bytes / 1048576.0);
    std::printf("  %-14s %10s %16s %10s %11s %11s %10s\n", "load max/mean", "step ms", "tokens/s (node)",
                "experts", "all-to-all", "all-reduce", "optimizer");
    for (double load : {1.0, 1.1, 1.25, 1.5}) {
        const moe::EpStepEstimate e =
            moe::estimate_ep_step(mc, one, ep, load, expert_share, tail_bytes, args.links);
        std::printf("  %-14.2f %10.2f %16.0f %10.2f %11.2f %11.2f %10.2f\n", load, e.step_s * 1e3,
                    tokens * ep / e.step_s, e.experts_s * 1e3, e.all_to_all_s * 1e3, e.all_reduce_s * 1e3,
                    e.optimizer_s * 1e3);
    }
}

#if MOE_HAVE_CUDA
// Each GEMM shape the steps so far planned, timed with cuBLASLt's first
// `count` candidates (the plan's own first), weighted by the calls a step
// made through it: what the step's GEMMs take as planned and with each
// shape's fastest candidate. The heaviest shapes first.
void print_gemm_candidates(moe::CudaOps& cuda, int count, int steps_run, double step_s) {
    using Shape = moe::CudaOps::GemmCandidates;
    std::vector<Shape> shapes = cuda.gemm_candidates(count, 0.005);
    const auto per_step = [&](const Shape& g) { return double(g.runs) / steps_run; };
    const auto planned_time = [&](const Shape& g) { return g.seconds.empty() ? 0.0 : per_step(g) * g.seconds[0]; };
    std::sort(shapes.begin(), shapes.end(),
              [&](const Shape& x, const Shape& y) { return planned_time(x) > planned_time(y); });
    std::printf("GEMM candidates (each GEMM shape the step planned, with cuBLASLt's %d best-ranked algorithms, "
                "each timed alone at the planned size; #0 is the plan's):\n",
                count);
    std::printf("  %-44s %10s %9s %9s %7s %9s %9s %9s\n", "cuBLASLt m x n x k, ops, types", "calls/step", "#0 ms",
                "best ms", "best", "#0 TF/s", "best TF/s", "ms saved");
    double planned = 0, best = 0;
    for (const Shape& g : shapes) {
        if (g.seconds.empty()) {
            std::printf("  %-44s %10.2f not timed: no room on the GPU for its operands\n", g.shape.c_str(),
                        per_step(g));
            continue;
        }
        const size_t f = size_t(std::min_element(g.seconds.begin(), g.seconds.end()) - g.seconds.begin());
        const double calls = per_step(g), t0 = g.seconds[0], tf = g.seconds[f];
        planned += calls * t0;
        best += calls * tf;
        std::printf("  %-44s %10.2f %9.4f %9.4f %4zu/%-2zu %9.1f %9.1f %9.3f\n", g.shape.c_str(), calls, t0 * 1e3,
                    tf * 1e3, f, g.seconds.size(), g.flops / t0 / 1e12, g.flops / tf / 1e12, calls * (t0 - tf) * 1e3);
    }
    std::printf("GEMMs a step (each timed alone): %.2f ms as planned, %.2f ms with each shape's fastest: %.2f ms "
                "(%.1f%% of the step) to gain\n",
                planned * 1e3, best * 1e3, (planned - best) * 1e3, 100 * (planned - best) / step_s);
}
#endif

// moe-bench's flags that time one GPU's work, refused where the run is not that.
void check_one_gpu_flags(const Args& args, const moe::Config& cfg, const moe::ProcessGroups& groups,
                         const moe::Ops& ops) {
    if (args.estimate_ep && groups.world_size() > 1)
        throw moe::JobError(0, "--estimate-ep starts from one GPU's step: run it as one process, without mpirun");
    if (args.estimate_ep && cfg.model.moe.num_experts % args.estimate_ep != 0)
        throw moe::JobError(0, "--estimate-ep " + std::to_string(args.estimate_ep) + " does not divide the " +
                                   std::to_string(cfg.model.moe.num_experts) +
                                   " experts (model.moe.num_experts): give a divisor");
    if (args.gemm_candidates && groups.world_size() > 1)
        throw moe::JobError(0, "--gemm-candidates times one GPU's GEMMs: run it as one process, without mpirun");
    if (args.gemm_candidates && ops.device() != moe::Device::CUDA)
        throw moe::JobError(0, "--gemm-candidates times cuBLASLt's algorithms: give run.device cuda (this run is on " +
                                   ops.device_name() + ")");
}

// The config's model on random tokens (a different stream per rank), stepped
// as training steps it: forward, backward with the gradient all-reduce
// (during it, or after it with --no-overlap), norm, AdamW.
class BenchSteps {
public:
    BenchSteps(const Args& args, const moe::Config& cfg, moe::Ops& ops, moe::ProcessGroups& groups)
        : args_(args), cfg_(cfg), ops_(ops), groups_(groups) {
        const int B = cfg.train.micro_batch_size, T = cfg.train.seq_len;
        moe::on_all_ranks(groups.world.get(), [&] {
            model_ = std::make_unique<moe::Model>(cfg.model, ops, ops.training_precision(), B, T,
                                                  moe::model_options(cfg, &groups));
        });
        model_->params().initialize(cfg.run.seed);
        optimizer_ = std::make_unique<moe::AdamW>(cfg.optimizer, model_->params());
        moe::Rng rng(cfg.run.seed, "bench tokens rank " + std::to_string(groups.world_rank()));
        inputs_.resize(size_t(B) * T);
        targets_.resize(size_t(B) * T);
        for (int32_t& t : inputs_) t = int32_t(rng.next() % uint64_t(cfg.model.vocab_size));
        for (int32_t& t : targets_) t = int32_t(rng.next() % uint64_t(cfg.model.vocab_size));
    }

    // The next training step; the all-reduce still due after the backward is
    // timed apart (grad_sync_s).
    void step() {
        const int64_t n = next_++;
        const moe::TraceRange range(moe::indexed("step", n));
        const moe::ForwardResult r = model_->forward(inputs_.data(), targets_.data(), 1.0);
        moe::GradientReducer reducer(model_->params(), &groups_);
        model_->backward(moe::Write::overwrite, args_.overlap ? reducer.bucket_ready() : nullptr);
        moe::PhaseScope scope(phase_times_, ops_, moe::Phase::Optimizer);
        ops_.synchronize();
        const auto t0 = std::chrono::steady_clock::now();
        reducer.finish();
        ops_.synchronize();
        grad_sync_s += since(t0);
        const double norm = moe::global_grad_norm(model_->params(), &groups_);
        optimizer_->step(n, cfg_.optimizer.lr, optimizer_->clip_scale(norm));
        loss = r.loss;
    }

    // Times each phase of the steps from now on into `times` (null: none).
    void time_phases(moe::PhaseTimes* times) {
        phase_times_ = times;
        model_->set_phase_times(times);
    }

    const moe::Model& model() const { return *model_; }
    int64_t steps_run() const { return next_ - 1; }

    double loss = 0, grad_sync_s = 0;

private:
    const Args& args_;
    const moe::Config& cfg_;
    moe::Ops& ops_;
    moe::ProcessGroups& groups_;
    std::unique_ptr<moe::Model> model_;
    std::unique_ptr<moe::AdamW> optimizer_;
    std::vector<int32_t> inputs_, targets_;
    moe::PhaseTimes* phase_times_ = nullptr;
    int64_t next_ = 1;
};

// The timed steps: each one's time, and over them all the gradient sync
// after the backward and the all-to-all's time and bytes.
struct TimedSteps {
    std::vector<double> step_s;
    double grad_sync_s = 0, all_to_all_s = 0, all_to_all_bytes = 0;  // over all the steps
    double mean() const {
        double m = 0;
        for (double s : step_s) m += s / double(step_s.size());
        return m;
    }
};

TimedSteps time_steps(BenchSteps& bench, int steps, moe::Ops& ops, moe::Communicator* ep) {
    TimedSteps t;
    bench.grad_sync_s = 0;
    const double a2a_s0 = ep ? ep->seconds_in_all_to_all() : 0;
    const double a2a_bytes0 = ep ? double(ep->bytes_sent_all_to_all()) : 0;
    for (int i = 0; i < steps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        bench.step();
        ops.synchronize();
        t.step_s.push_back(since(t0));
    }
    t.grad_sync_s = bench.grad_sync_s;
    if (ep) {
        t.all_to_all_s = ep->seconds_in_all_to_all() - a2a_s0;
        t.all_to_all_bytes = double(ep->bytes_sent_all_to_all()) - a2a_bytes0;
    }
    return t;
}

// Their figures (the lead rank prints them): step time, tokens/s, model
// TFLOP/s and MFU, device memory, the gradient sync and, across ranks, the
// all-to-all.
void print_timed_steps(const Args& args, const moe::Config& cfg, const BenchSteps& bench, const TimedSteps& t,
                       const moe::Ops& ops, int ranks, bool across_ranks) {
    const moe::ModelConfig& mc = cfg.model;
    const int T = cfg.train.seq_len;
    const double mean = t.mean(), best = *std::min_element(t.step_s.begin(), t.step_s.end());
    const double tokens_per_rank = double(cfg.train.micro_batch_size) * T, tokens_per_step = tokens_per_rank * ranks;
    const double tok_s = tokens_per_step / mean;
    const double tflops = moe::train_flops_per_token(mc, T) * tok_s / 1e12;
    const bool gpu = ops.device() == moe::Device::CUDA;
    std::printf("step time      %.2f ms mean, %.2f ms best (%d steps after %d warm-up; loss %.4f)\n", mean * 1e3,
                best * 1e3, args.steps, args.warmup, bench.loss);
    std::printf("tokens/s       %.0f (%.0f tokens per step, %d rank(s))\n", tok_s, tokens_per_step, ranks);
    std::printf("model TFLOP/s  %.4g in all, %.4g per rank", tflops, tflops / ranks);
    if (gpu)
        std::printf("; MFU %.1f%% of %.1f TFLOP/s per GPU\n", 100 * moe::model_flops_utilization(mc, T, tok_s, ranks),
                    moe::kGpuPeakTflops);
    else
        std::printf(" (no MFU on the CPU)\n");
    if (gpu)
        std::printf("GPU memory     %.2f GiB in use on rank 0's GPU (CUDA context included); model planned "
                    "%.2f GiB activations\n",
                    ops.device_memory_used() / 1073741824.0, bench.model().activation_bytes() / 1073741824.0);
    std::printf("grad sync      %.2f ms per step after the backward (%s)\n", t.grad_sync_s / args.steps * 1e3,
                args.overlap ? "the rest of the all-reduce started layer by layer during it" : "all of it");
    if (across_ranks) {
        const double a2a_s = t.all_to_all_s / args.steps, bytes = t.all_to_all_bytes / args.steps;
        std::printf("all-to-all     %.2f ms per step on rank 0 (%.1f%% of the step), %.2f MiB sent per step, "
                    "%.1f bytes per token\n",
                    a2a_s * 1e3, 100 * a2a_s / mean, bytes / 1048576.0, bytes / tokens_per_rank);
    }
}

// --phase-steps more steps, each phase timed (the device waited for at each
// boundary), printed on the lead rank with the ep estimate where asked.
void phase_pass(const Args& args, BenchSteps& bench, double mean_step_s, double tokens, bool lead) {
    moe::PhaseTimes phase_times;
    bench.time_phases(&phase_times);
    for (int i = 0; i < args.phase_steps; ++i) bench.step();
    bench.time_phases(nullptr);
    double total = 0;
    for (double s : phase_times.seconds) total += s;
    if (!lead) return;
    std::printf("phases (%d steps, waiting for the device at each boundary: %.2f ms per step)\n", args.phase_steps,
                total / args.phase_steps * 1e3);
    for (int p = 0; p < moe::kPhases; ++p)
        std::printf("  %-36s %8.2f ms %5.1f%%\n", moe::phase_name(moe::Phase(p)),
                    phase_times.seconds[size_t(p)] / args.phase_steps * 1e3,
                    100 * phase_times.seconds[size_t(p)] / total);
    if (args.estimate_ep) print_ep_estimate(args, bench.model(), phase_times, mean_step_s, tokens);
}

int run(const Args& args) {
    moe::Config cfg;
    std::unique_ptr<moe::Communicator> world_comm = moe::MpiCommunicator::world();
    moe::on_all_ranks(world_comm.get(), [&] { cfg = moe::load_config(args.config.path, args.config.overrides); });
    world_comm->set_timeout(cfg.parallel.collective_timeout_s);
    std::unique_ptr<moe::Ops> ops;
    moe::on_all_ranks(world_comm.get(), [&] { ops = moe::make_backend(cfg.run, world_comm.get()); });
    world_comm = moe::world_for_backend(std::move(world_comm), *ops, cfg.parallel);
    moe::ProcessGroups groups = moe::make_process_groups(std::move(world_comm), cfg.parallel.expert_parallel);
    check_one_gpu_flags(args, cfg, groups, *ops);
    const bool lead = groups.world_rank() == 0;
    BenchSteps bench(args, cfg, *ops, groups);
    if (lead)
        spdlog::info("moe-bench: {} on {} ({} rank(s), ep {}), micro-batch {} x {} tokens per rank", args.config.path,
                     ops->device_name(), groups.world_size(), groups.ep_size(), cfg.train.micro_batch_size,
                     cfg.train.seq_len);
    for (int i = 0; i < args.warmup; ++i) bench.step();
    ops->synchronize();
    groups.world->barrier();

    moe::Communicator* ep = groups.ep_size() > 1 ? groups.ep.get() : nullptr;
    const TimedSteps timed = time_steps(bench, args.steps, *ops, ep);
    groups.world->barrier();
    if (lead) print_timed_steps(args, cfg, bench, timed, *ops, groups.world_size(), ep != nullptr);
    const double tokens = double(cfg.train.micro_batch_size) * cfg.train.seq_len;
    if (args.phase_steps > 0) phase_pass(args, bench, timed.mean(), tokens, lead);
#if MOE_HAVE_CUDA  // (without, the run stopped at start) last: its allocations come after every figure
    if (args.gemm_candidates && lead)
        print_gemm_candidates(dynamic_cast<moe::CudaOps&>(*ops), args.gemm_candidates, int(bench.steps_run()),
                              timed.mean());
#endif
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    spdlog::set_pattern("[%H:%M:%S] %l %v");
    moe::MpiRuntime mpi(&argc, &argv);
    if (mpi.world_rank() != 0) spdlog::set_level(spdlog::level::warn);
    const Args args = parse(argc, argv);
    try {
        return run(args);
    } catch (const moe::JobError& e) {  // raised on every rank: say it once
        if (mpi.world_rank() == 0) std::fprintf(stderr, "%s: %s\n", kProgram, e.what());
        return 2;
    } catch (const std::exception& e) {
        if (mpi.world_size() > 1) {
            std::fprintf(stderr, "%s: rank %d: %s\n", kProgram, mpi.world_rank(), e.what());
            moe::abort_all(1);
        }
        moe::exit_with_error(kProgram, e.what());
    }
}
