#include "engine/model/memory_plan.h"

#include <spdlog/fmt/fmt.h>

#include "engine/model/model.h"
#include "kernels/cpu/cpu_ops.h"

namespace moe {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

Precision precision_of(const Config& cfg) {
    return cfg.run.device == "cpu" ? Precision(DType::F32) : Precision::mixed_bf16();
}

}  // namespace

size_t RankPlan::total() const { return parameters.total() + kept_activations + scratch + runtime; }

ParameterCounts count_parameters(const ModelConfig& m) {
    CpuOps ops;  // a plan: nothing is allocated
    ModelOptions plan;
    plan.memory = ModelOptions::Memory::plan_only;
    const Model model(m, ops, Precision(DType::F32), 1, 1, plan);
    ParameterCounts c;
    for (const Param& p : model.params().all()) {
        c.total += double(p.numel());
        c.active += p.is_expert_stack() ? double(p.numel()) * m.moe.top_k / m.moe.num_experts : double(p.numel());
    }
    return c;
}

RankPlan plan_rank(const Config& cfg, int world_size) {
    const int ep = cfg.parallel.expert_parallel;
    if (world_size < 1 || world_size % ep != 0)
        throw ConfigError("config: a layout of " + std::to_string(world_size) + " ranks cannot split the experts " +
                          "over parallel.expert_parallel = " + std::to_string(ep) + ": plan a multiple of " +
                          std::to_string(ep) + " ranks");
    ModelOptions options;
    options.memory = ModelOptions::Memory::plan_only;
    options.ep = GroupPlace::planned(ep, 0);
    options.recompute = cfg.train.recompute;
    if (cfg.parallel.shard_optimizer)  // rank 0 holds the largest chunks
        options.shards = {GroupPlace::planned(world_size, 0), GroupPlace::planned(world_size / ep, 0)};
    CpuOps ops;
    const Model model(cfg.model, ops, precision_of(cfg), cfg.train.micro_batch_size, cfg.train.seq_len, options);
    RankPlan plan;
    plan.world_size = world_size;
    plan.expert_parallel = ep;
    plan.gpu = cfg.run.device != "cpu";
    plan.parameters = model.parameter_bytes();
    plan.kept_activations = model.saved_activation_bytes();
    plan.scratch = model.scratch_bytes();
    plan.runtime = plan.gpu ? kGpuRuntimeBytes : 0;
    return plan;
}

std::string plan_report(const Config& cfg, const RankPlan& plan, std::optional<size_t> available,
                        const std::string& available_from) {
    const ModelConfig& m = cfg.model;
    const ParameterCounts counts = count_parameters(m);
    const bool bf16 = plan.gpu;
    std::string out = fmt::format(
        "model: {:.3f}B parameters, {:.3f}B active a token; {} layers, hidden {}, {} experts (top-{}) of inner "
        "size {}, vocabulary {}\n",
        counts.total / 1e9, counts.active / 1e9, m.num_layers, m.hidden_size, m.moe.num_experts, m.moe.top_k,
        m.moe.expert_hidden_size, m.vocab_size);
    if (m.moe.shared_experts > 0)
        out += fmt::format("shared experts: {} a layer of inner size {} ({:.3f}B parameters, all active)\n",
                           m.moe.shared_experts, m.moe.shared_hidden(),
                           3.0 * m.num_layers * m.hidden_size * double(m.moe.shared_inner()) / 1e9);
    out += fmt::format(
        "layout: {} rank(s), expert parallel {} x data parallel {}, {} expert(s) a rank; micro-batch {} x {} "
        "tokens; optimizer state split: {}; recompute: {}\n",
        plan.world_size, plan.expert_parallel, plan.world_size / plan.expert_parallel,
        m.moe.num_experts / plan.expert_parallel, cfg.train.micro_batch_size, cfg.train.seq_len,
        cfg.parallel.shard_optimizer ? "yes (ZeRO-1)" : "no", name_of(cfg.train.recompute));
    const auto line = [&](const char* what, size_t bytes) { out += fmt::format("  {:<38} {:9.2f}\n", what, bytes / kGiB); };
    out += "per rank (GiB):\n";
    line(bf16 ? "weights (fp32 masters)" : "weights (fp32)", plan.parameters.masters);
    if (plan.parameters.working_copy) line(bf16 ? "weights (bf16 working copy)" : "weights (whole, for the compute)",
                                           plan.parameters.working_copy);
    line("gradients (fp32)", plan.parameters.gradients);
    line("optimizer state (AdamW m and v)", plan.parameters.moments);
    line("activations kept for the backward", plan.kept_activations);
    line("scratch", plan.scratch);
    if (plan.runtime) line("CUDA context, cuBLASLt, NCCL (allowance)", plan.runtime);
    line("total", plan.total());
    if (!available) {
        out += "fits: unknown (give --memory-gib, the memory of a " + std::string(plan.gpu ? "GPU" : "rank") + ")\n";
        return out;
    }
    const double need = plan.total() / kGiB, have = *available / kGiB;
    out += plan.total() <= *available
               ? fmt::format("fits: yes, {:.2f} of {:.2f} GiB ({}), {:.2f} GiB to spare\n", need, have, available_from,
                             have - need)
               : fmt::format("fits: no, {:.2f} GiB needed and {:.2f} there ({}), {:.2f} GiB short\n", need, have,
                             available_from, need - have);
    return out;
}

std::vector<LayoutFit> smallest_layouts(const Config& cfg, int gpus_per_node, size_t memory, int max_nodes) {
    int ep = 1;  // the largest divisor of the experts a node holds
    for (int d = 1; d <= std::min(gpus_per_node, cfg.model.moe.num_experts); ++d)
        if (cfg.model.moe.num_experts % d == 0 && gpus_per_node % d == 0) ep = d;
    std::vector<LayoutFit> fits;
    for (bool shard : {false, true}) {
        for (Recompute r : {Recompute::none, Recompute::experts, Recompute::full}) {
            Config c = cfg;
            c.parallel.expert_parallel = ep;
            c.parallel.shard_optimizer = shard;
            c.train.recompute = r;
            LayoutFit fit{shard, r, 0, {}};
            // Without the split, more nodes only add data parallelism: one node tells.
            for (int nodes = 1; nodes <= (shard ? max_nodes : 1); ++nodes) {
                fit.plan = plan_rank(c, nodes * gpus_per_node);
                if (fit.plan.total() <= memory) {
                    fit.nodes = nodes;
                    break;
                }
            }
            fits.push_back(fit);
        }
    }
    return fits;
}

std::string layouts_report(int gpus_per_node, size_t memory, const std::vector<LayoutFit>& fits) {
    std::string out = fmt::format("smallest layouts on nodes of {} GPUs of {:.1f} GiB (expert parallel {} within a "
                                  "node, the rest data parallel):\n",
                                  gpus_per_node, memory / kGiB, fits.empty() ? 1 : fits[0].plan.expert_parallel);
    out += fmt::format("  {:<16} {:<10} {:>6} {:>6} {:>12}\n", "optimizer split", "recompute", "nodes", "GPUs",
                       "GiB a GPU");
    for (const LayoutFit& f : fits) {
        if (f.nodes == 0) {
            out += fmt::format("  {:<16} {:<10} {:>6} {:>6} {:>12}\n", f.shard_optimizer ? "yes (ZeRO-1)" : "no",
                               name_of(f.recompute), "-", "-", "does not fit");
            continue;
        }
        out += fmt::format("  {:<16} {:<10} {:>6} {:>6} {:>12.2f}\n", f.shard_optimizer ? "yes (ZeRO-1)" : "no",
                           name_of(f.recompute), f.nodes, f.nodes * gpus_per_node, f.plan.total() / kGiB);
    }
    return out;
}

}  // namespace moe
