// What the checkpoint tools (moe-checkpoint, moe-generate) share: which
// checkpoint a DIR argument means, and the tensor names of a model in
// MODEL.md's order (the order a person reads them in, not the order the
// engine allocates them).
#pragma once
#include <algorithm>
#include <array>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/io/checkpoint.h"
#include "engine/model/model.h"
#include "kernels/cpu/cpu_ops.h"

namespace moe {

// DIR is a checkpoint directory (it has checkpoint.yaml) or a run directory,
// which stands for its newest complete checkpoint. CheckpointError if neither.
inline CheckpointInfo open_checkpoint(const std::string& dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::exists(dir + "/checkpoint.yaml", ec)) return read_checkpoint_info(dir);
    if (fs::is_directory(checkpoints_dir(dir), ec)) {
        const std::string latest = latest_checkpoint(dir);
        if (latest.empty())
            throw CheckpointError("run directory '" + dir + "' has no complete checkpoint in " + checkpoints_dir(dir));
        return read_checkpoint_info(latest);
    }
    if (!fs::is_directory(dir, ec)) throw CheckpointError("'" + dir + "': no such directory");
    throw CheckpointError("'" + dir + "' has no checkpoint.yaml and no checkpoints/: it is neither a run directory "
                          "nor a complete checkpoint (a save that never finished has no checkpoint.yaml)");
}

// The model planned, not allocated: its parameters' names and shapes.
inline Model planned_model(const ModelConfig& m, CpuOps& ops) {
    ModelOptions plan;
    plan.memory = Model::Memory::plan_only;
    return Model(m, ops, Precision(DType::F32), 1, 1, plan);
}

// The model's states (tensors saved with the weights that the optimizer does
// not train: no moments).
inline std::set<std::string> model_state_names(const ModelConfig& m) {
    CpuOps ops;
    const Model model = planned_model(m, ops);
    std::set<std::string> names;
    for (const Param& p : model.params().states()) names.insert(p.name);
    return names;
}

// Every weight tensor of the model, named as the model's layers name their
// parameters (a model planned, not allocated), in the order MODEL.md lists
// them, which a person reads: each layer's attention, then its MoE (router,
// then expert by expert), then its dynamics; shared dynamics after the layers.
inline std::vector<std::string> model_tensor_names(const ModelConfig& m) {
    CpuOps ops;
    const Model model = planned_model(m, ops);
    std::vector<std::string> names = model.params().names();
    // (group, layer, part, expert): groups embed, layers, shared dynamics,
    // norm, lm_head; within a layer attn* < moe* < dynamics.
    const auto key = [](const std::string& name) {
        const auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
        if (starts("embed.")) return std::array<int, 4>{0, 0, 0, 0};
        if (starts("dynamics.")) return std::array<int, 4>{2, 0, 0, 0};
        if (!starts("layers.")) return std::array<int, 4>{starts("norm.") ? 3 : 4, 0, 0, 0};
        const size_t dot = name.find('.', 7);
        const std::string leaf = name.substr(dot + 1);
        const int part = leaf.rfind("attn", 0) == 0 ? 0 : leaf.rfind("moe", 0) == 0 ? 1 : 2;
        const size_t at = leaf.find(".experts.");  // not moe.shared_experts.w_gate: no index
        const int expert = at == std::string::npos ? -1 : std::stoi(leaf.substr(at + 9));
        return std::array<int, 4>{1, std::stoi(name.substr(7, dot - 7)), part, expert};
    };
    std::stable_sort(names.begin(), names.end(),
                     [&](const std::string& a, const std::string& b) { return key(a) < key(b); });
    return names;
}

}  // namespace moe
