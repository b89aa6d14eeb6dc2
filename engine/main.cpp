// moe-train: trains the model a YAML config describes, or (parity mode) runs
// one forward/backward and dumps the gradients.
#include <omp.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

#include "engine/cli.h"
#include "engine/config.h"
#include "engine/parity.h"
#include "engine/trainer.h"
#include "kernels/cpu/cpu_ops.h"

namespace {

std::unique_ptr<moe::Ops> make_backend(const moe::RunConfig& run) {
    if (run.device == "cuda")
        throw moe::ConfigError("config: run.device is 'cuda' but this build has no CUDA backend yet: set run.device=cpu");
    if (run.device == "auto") spdlog::info("run.device=auto: using the CPU backend");
    if (run.threads > 0) omp_set_num_threads(run.threads);
    return std::make_unique<moe::CpuOps>();
}

}  // namespace

int main(int argc, char** argv) {
    spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
    try {
        const moe::CliOptions cli = moe::parse_cli(argc, argv);
        if (cli.help) {
            std::fputs(moe::cli_usage(), stdout);
            return 0;
        }
        const moe::Config cfg = moe::load_config(cli.config, cli.overrides);
        auto ops = make_backend(cfg.run);
        if (!cli.batch.empty()) {
            moe::ParityRequest req{cli.batch, cli.init_from, cli.dump_grads,
                                   cli.dtype == "f64" ? moe::DType::F64 : moe::DType::F32};
            const double loss = moe::run_parity(cfg.model, cfg.run.seed, *ops, req);
            spdlog::info("parity: loss {:.9g}; gradients written to {}", loss, cli.dump_grads);
            return 0;
        }
        moe::TrainOptions opts;
        opts.init_from = cli.init_from;
        const moe::TrainSummary s = moe::train(cfg, *ops, opts);
        if (s.val_loss == s.val_loss) std::printf("final validation loss %.4f\n", s.val_loss);
        return 0;
    } catch (const moe::CliError& e) {
        std::fprintf(stderr, "moe-train: %s\n", e.what());
        return 2;
    } catch (const moe::ConfigError& e) {
        std::fprintf(stderr, "moe-train: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "moe-train: error: %s\n", e.what());
        return 1;
    }
}
