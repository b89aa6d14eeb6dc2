// The memory of one rank of a run, planned from its config without
// allocating anything: a Model declared and carved dry, the very sizing code
// its arenas use, so a run allocates what its plan says (moe-train --plan).
// Also the parameter counts of the whole model, and the smallest layout of
// GPUs that a config fits.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/params/parameters.h"

namespace moe {

// Every parameter, and those one token uses (the k of E experts of a layer).
struct ParameterCounts {
    double total = 0, active = 0;
};
ParameterCounts count_parameters(const ModelConfig& m);

// One rank of a layout of world_size ranks (expert parallel as the config
// says), in the precision of run.device (cuda: bf16 compute, fp32 masters).
struct RankPlan {
    int world_size = 1, expert_parallel = 1;
    bool gpu = false;
    ParameterBytes parameters;
    size_t kept_activations = 0, scratch = 0;
    // GPU only: what the CUDA context, cuBLASLt's workspace and NCCL's
    // buffers take besides the arenas (an allowance, not a measurement).
    size_t runtime = 0;
    size_t total() const;
};
constexpr size_t kGpuRuntimeBytes = size_t(2) << 30;

// ConfigError if world_size is not a multiple of parallel.expert_parallel.
RankPlan plan_rank(const Config& cfg, int world_size);

// The report moe-train --plan prints; available: the bytes a rank has, if
// known (then it says whether the plan fits, and by how much).
std::string plan_report(const Config& cfg, const RankPlan& plan, std::optional<size_t> available,
                        const std::string& available_from);

// The smallest layouts of nodes of gpus_per_node GPUs of `memory` bytes each
// that fit cfg, for each choice of parallel.shard_optimizer and
// train.recompute: nodes (up to max_nodes) x gpus_per_node ranks, expert
// parallel the largest divisor of the experts that a node holds, the rest
// data parallel.
struct LayoutFit {
    bool shard_optimizer;
    Recompute recompute;
    int nodes = 0;  // 0: none up to max_nodes fits
    RankPlan plan;
};
std::vector<LayoutFit> smallest_layouts(const Config& cfg, int gpus_per_node, size_t memory, int max_nodes = 256);
std::string layouts_report(int gpus_per_node, size_t memory, const std::vector<LayoutFit>& fits);

}  // namespace moe
