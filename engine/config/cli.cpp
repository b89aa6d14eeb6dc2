#include "engine/config/cli.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace moe {

const char* cli_usage() {
    return "usage: moe-train --config FILE [--set key=value]... [--resume auto|DIR | --init-from W.safetensors]\n"
           "       moe-train --config FILE --batch B.safetensors --dump-grads G.safetensors\n"
           "                 [--init-from W.safetensors] [--dtype f32|f64] [--set key=value]...\n"
           "\n"
           "  --config FILE        YAML run configuration (see configs/)\n"
           "  --set key=value      override any config key, e.g. --set train.steps=50\n"
           "  --resume auto|DIR    continue from a checkpoint: auto takes the newest complete one in\n"
           "                       run.out_dir/checkpoints (or starts fresh when there is none)\n"
           "  --init-from FILE     start a new run from these weights (safetensors, MODEL.md names)\n"
           "  --batch FILE         parity mode: one batch, tensors 'inputs' and 'targets' (I32 [B, T])\n"
           "  --dump-grads FILE    parity mode: write the loss and every gradient there and exit\n"
           "  --dtype f32|f64      parity mode: compute precision (default f32)\n"
           "  --plan               print a rank's memory plan (weights, gradients, optimizer state,\n"
           "                       activations, scratch) and whether it fits, then exit; with\n"
           "    --ranks N          the world size to plan (default parallel.expert_parallel)\n"
           "    --memory-gib X     the memory of a rank's device (default: this machine's GPU, or\n"
           "                       its available RAM for run.device cpu)\n"
           "    --gpus-per-node G  also the smallest layouts of nodes of G such GPUs\n";
}

namespace {

int positive_integer(const std::string& flag, const std::string& text) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end || errno || v < 1 || v > 1000000)
        throw CliError(flag + " takes a whole number from 1 to 1000000, got '" + text + "'");
    return int(v);
}

double positive_number(const std::string& flag, const std::string& text) {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end || !std::isfinite(v) || v <= 0 || text.find_first_of("xXnN") != std::string::npos)
        throw CliError(flag + " takes a number > 0, got '" + text + "'");
    return v;
}

}  // namespace

CliOptions parse_cli(int argc, const char* const* argv) {
    CliOptions o;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw CliError(arg + " needs a value (see --help)");
            return argv[++i];
        };
        if (arg == "--help" || arg == "-h")
            o.help = true;
        else if (arg == "--config")
            o.config = value();
        else if (arg == "--set")
            o.overrides.push_back(value());
        else if (arg == "--init-from")
            o.init_from = value();
        else if (arg == "--resume")
            o.resume = value();
        else if (arg == "--dump-grads")
            o.dump_grads = value();
        else if (arg == "--batch")
            o.batch = value();
        else if (arg == "--dtype")
            o.dtype = value();
        else if (arg == "--plan")
            o.plan = true;
        else if (arg == "--ranks")
            o.plan_ranks = positive_integer(arg, value());
        else if (arg == "--gpus-per-node")
            o.plan_gpus_per_node = positive_integer(arg, value());
        else if (arg == "--memory-gib")
            o.plan_memory_gib = positive_number(arg, value());
        else
            throw CliError("unknown argument '" + arg + "' (see --help)");
    }
    if (o.help) return o;
    if (o.config.empty()) throw CliError("--config FILE is required (for example --config configs/tiny.yaml)");
    if (o.dump_grads.empty() != o.batch.empty())
        throw CliError("parity mode needs both --batch and --dump-grads");
    if (o.dtype != "f32" && o.dtype != "f64") throw CliError("--dtype must be f32 or f64, got '" + o.dtype + "'");
    if (!o.resume.empty() && !o.init_from.empty())
        throw CliError("--resume and --init-from exclude each other: --resume continues a run (weights, optimizer, "
                       "data position), --init-from starts a new one from weights");
    if (!o.resume.empty() && !o.batch.empty()) throw CliError("--resume does not apply to parity mode");
    if (o.dtype != "f32" && o.batch.empty()) throw CliError("--dtype applies to parity mode (--batch, --dump-grads) only");
    if (!o.plan && (o.plan_ranks || o.plan_memory_gib > 0 || o.plan_gpus_per_node))
        throw CliError("--ranks, --memory-gib and --gpus-per-node apply to --plan only");
    if (o.plan && (!o.batch.empty() || !o.resume.empty() || !o.init_from.empty()))
        throw CliError("--plan only plans: give it without --resume, --init-from or parity flags");
    return o;
}

std::string cli_agreement_text(const CliOptions& o) {
    return std::string(o.help ? "--help" : "") + (o.plan ? " --plan" : "") + "\n--init-from " + o.init_from +
           "\n--resume " + o.resume + "\n--batch " + o.batch + "\n--dump-grads " + o.dump_grads + "\n--dtype " +
           o.dtype;
}

}  // namespace moe
