// What the checkpoint tools (moe-checkpoint, moe-generate) share: which
// checkpoint a DIR argument means, and the tensor names of a model in
// MODEL.md's order (the order a person reads them in, not the order the
// engine happens to allocate them).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/config.h"

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

// Every weight tensor of the model, named and ordered as MODEL.md lists them;
// experts by global index. (tests/test_checkpoint_tools.cpp checks this list
// against the names the Model itself gives its parameters.)
inline std::vector<std::string> model_tensor_names(const ModelConfig& m) {
    std::vector<std::string> names = {"embed.weight"};
    const auto add = [&](const std::string& prefix, std::initializer_list<const char*> leaves) {
        for (const char* leaf : leaves) names.push_back(prefix + leaf);
    };
    const auto dynamics = [&](const std::string& prefix) {
        add(prefix, {"mu", "c1.weight", "c1.bias", "c2.weight", "c2.bias"});
    };
    for (int l = 0; l < m.num_layers; ++l) {
        const std::string layer = "layers." + std::to_string(l) + ".";
        add(layer, {"attn_norm.weight", "attn.wq", "attn.wk", "attn.wv", "attn.wo"});
        if (m.qk_norm) add(layer, {"attn.q_norm.weight", "attn.k_norm.weight"});
        add(layer, {"moe_norm.weight"});
        if (m.moe.router == "learned") add(layer, {"moe.router.weight"});
        for (int e = 0; e < m.moe.num_experts; ++e)
            add(layer + "moe.experts." + std::to_string(e) + ".", {"w_gate", "w_up", "w_down"});
        if (m.dynamics.enabled && !m.dynamics.shared) dynamics(layer + "dynamics.");
    }
    if (m.dynamics.enabled && m.dynamics.shared) dynamics("dynamics.");
    add("", {"norm.weight"});
    if (!m.tie_embeddings) add("", {"lm_head.weight"});
    return names;
}

}  // namespace moe
