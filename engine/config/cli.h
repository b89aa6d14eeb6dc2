// The command line of moe-train.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

namespace moe {

struct CliOptions {
    std::string config;                  // --config FILE
    std::vector<std::string> overrides;  // --set a.b=c (repeatable)
    std::string init_from;               // --init-from W.safetensors
    std::string resume;                  // --resume auto|DIR
    std::string dump_grads;              // --dump-grads G.safetensors (parity mode)
    std::string batch;                   // --batch B.safetensors (parity mode)
    std::string dtype = "f32";           // --dtype f32|f64 (parity mode)
    bool help = false;
    // --plan: print the memory plan of a rank and exit, for a layout of
    // --ranks N (default: parallel.expert_parallel), against --memory-gib X
    // (default: this machine's RAM for run.device cpu); --gpus-per-node G adds
    // the smallest layouts of such nodes that fit.
    bool plan = false;
    int plan_ranks = 0;
    double plan_memory_gib = 0;
    int plan_gpus_per_node = 0;
};

struct CliError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Throws CliError with one line saying what is wrong and how to fix it.
CliOptions parse_cli(int argc, const char* const* argv);
const char* cli_usage();
// The options every rank of a job must share, as text to compare: all but
// the config's path and overrides (the config they make is compared whole).
std::string cli_agreement_text(const CliOptions& o);

}  // namespace moe
