// moe-train: trains the model a YAML config describes, as one process or as
// the ranks of an mpirun/srun job, or (parity mode) runs one forward/backward
// and dumps the gradients.
#include <omp.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>

#include "comm/agreement.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"
#include "comm/process_groups.h"
#include "engine/run/backend.h"
#include "engine/config/cli.h"
#include "engine/config/config.h"
#include "engine/model/memory_plan.h"
#include "kernels/cpu/cpu_ops.h"
#include "engine/train/parity.h"
#include "engine/run/stop_signal.h"
#include "engine/train/trainer.h"

namespace {

// Stopped by a signal before train.steps, with a checkpoint to resume from.
constexpr int kExitStopped = 3;

// --plan: a rank's memory for the layout asked for, held against --memory-gib
// or this machine's device (run.device auto: the GPU when one is visible),
// and with --gpus-per-node the smallest layouts of such GPUs that fit.
void print_plan(const moe::CliOptions& cli, moe::Config cfg) {
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    const std::optional<size_t> gpu = moe::gpu_memory();
    if (cfg.run.device == "auto") cfg.run.device = gpu ? "cuda" : "cpu";
    std::optional<size_t> available;
    std::string from;
    if (cli.plan_memory_gib > 0) {
        available = size_t(cli.plan_memory_gib * kGiB);
        from = "--memory-gib";
    } else if (cfg.run.device == "cpu") {
        available = moe::CpuOps().memory_available();
        from = "this machine's available RAM";
    } else if (gpu) {
        available = *gpu;
        from = "this machine's GPU";
    }
    if (cli.plan_gpus_per_node && cfg.run.device == "cpu")
        throw moe::CliError("--gpus-per-node plans nodes of GPUs but run.device is cpu: add --set run.device=cuda");
    if (cli.plan_gpus_per_node && !available)
        throw moe::CliError("--gpus-per-node needs the memory of one GPU: give --memory-gib (e.g. 79.6 for an H100 "
                            "80GB), or plan where a GPU is visible");
    const int ranks = cli.plan_ranks ? cli.plan_ranks : cfg.parallel.expert_parallel;
    std::printf("plan: %s\n%s", cli.config.c_str(),
                moe::plan_report(cfg, moe::plan_rank(cfg, ranks), available, from).c_str());
    if (!cli.plan_gpus_per_node) return;
    const auto fits = moe::smallest_layouts(cfg, cli.plan_gpus_per_node, *available);
    std::printf("%s", moe::layouts_report(cli.plan_gpus_per_node, *available, fits).c_str());
}

int run(int argc, char** argv) {
    std::unique_ptr<moe::Communicator> world = moe::MpiCommunicator::world();
    moe::CliOptions cli;
    moe::Config cfg;
    // Every rank reads the command line and the config; one that rejects them
    // (a --set given to one rank only, a file one node lacks) stops them all.
    moe::on_all_ranks(world.get(), [&] {
        cli = moe::parse_cli(argc, argv);
        if (!cli.help) cfg = moe::load_config(cli.config, cli.overrides);
    });
    // Ranks started with different options (--help, --init-from, --resume or
    // a parity flag on one rank only) or configs would train different models,
    // or wait in mismatched collectives: refuse before any work.
    moe::check_same_on_all_ranks(*world, "command line options", moe::cli_agreement_text(cli));
    if (cli.help) {
        if (world->rank() == 0) std::fputs(moe::cli_usage(), stdout);
        return 0;
    }
    moe::check_same_on_all_ranks(*world, "config", moe::to_yaml(cfg));
    if (cli.plan) {
        if (world->rank() == 0) print_plan(cli, cfg);
        return 0;
    }
    world->set_timeout(cfg.parallel.collective_timeout_s);
    std::unique_ptr<moe::Ops> ops;
    moe::on_all_ranks(world.get(), [&] { ops = moe::make_backend(cfg.run, world.get()); });
    world = moe::world_for_backend(std::move(world), *ops, cfg.parallel);
    moe::ProcessGroups groups = moe::make_process_groups(std::move(world), cfg.parallel.expert_parallel);
    if (!cli.batch.empty()) {
        if (groups.world_size() > 1)  // every rank sees it
            throw moe::JobError(0, "parity mode (--batch, --dump-grads) runs as one process: start it without mpirun");
        moe::ParityRequest req{cli.batch, cli.init_from, cli.dump_grads,
                               cli.dtype == "f64" ? moe::DType::F64 : moe::DType::F32};
        const double loss = moe::run_parity(cfg.model, cfg.run.seed, *ops, req);
        spdlog::info("parity: loss {:.9g}; gradients written to {}", loss, cli.dump_grads);
        return 0;
    }
    moe::TrainOptions opts;
    opts.init_from = cli.init_from;
    opts.resume = cli.resume;
    moe::install_stop_handlers();
    std::signal(SIGXFSZ, SIG_IGN);  // a file size limit fails the write (EFBIG) instead of killing us
    const moe::TrainSummary s = moe::train(cfg, *ops, opts, &groups);
    if (s.stopped) return kExitStopped;
    if (groups.world_rank() == 0 && s.val_loss == s.val_loss) {
        std::printf("final validation loss %.4f", s.val_loss);
        if (s.val_bpb == s.val_bpb) std::printf(" (%.4f bits per byte)", s.val_bpb);
        std::printf(", tokenizer %s\n", s.tokenizer.c_str());
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    spdlog::set_pattern("[%H:%M:%S] %l %v");
    moe::MpiRuntime mpi(&argc, &argv);
    const int rank = mpi.world_rank(), world = mpi.world_size();
    if (rank != 0) spdlog::set_level(spdlog::level::warn);  // one log for the job
    try {
        return run(argc, argv);
    } catch (const moe::JobError& e) {  // raised on every rank: say it once
        if (rank == 0) {
            const std::string where = e.rank() == 0 ? "" : "rank " + std::to_string(e.rank()) + ": ";
            std::fprintf(stderr, "moe-train: %s%s\n", where.c_str(), e.what());
        }
        return 2;
    } catch (const std::exception& e) {
        // This rank's alone (a failed NCCL, CUDA or MPI call, a bad shard, a
        // full disk): the others may wait in a collective, so it says so and
        // stops the whole job rather than leave them hanging.
        const bool bad_input = dynamic_cast<const moe::CliError*>(&e) || dynamic_cast<const moe::ConfigError*>(&e);
        if (world > 1) {
            std::fprintf(stderr, "moe-train: rank %d: %s%s\n", rank, bad_input ? "" : "error: ", e.what());
            moe::abort_all(bad_input ? 2 : 1);
        }
        std::fprintf(stderr, "moe-train: %s%s\n", bad_input ? "" : "error: ", e.what());
        return bad_input ? 2 : 1;
    }
}
