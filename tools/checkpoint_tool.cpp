// moe-checkpoint: look into a checkpoint, and turn one into a standalone model.
//   inspect DIR          progress, tokenizer, saving layout, model config, every file with
//                        its checksum verdict, every weight with its L2 norm and
//                        the norms of its Adam moments (MODEL.md order)
//   export DIR --out O   O/model.safetensors (every part merged, MODEL.md names,
//                        F32: what moe-train --init-from loads; its metadata
//                        names the tokenizer) and O/config.json
// Checkpoints are read one tensor at a time: inspect never holds more than one
// in memory, whatever the model's size.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <functional>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tools/tool_args.h"
#include "engine/io/safetensors.h"
#include "tools/checkpoint_reading.h"

using namespace moe;
namespace fs = std::filesystem;

namespace {

const char* kUsage =
    "usage: moe-checkpoint inspect DIR\n"
    "       moe-checkpoint export DIR --out OUT_DIR [--force]\n"
    "  DIR: a checkpoint directory (runs/x/checkpoints/step-00000200) or a run directory (its newest checkpoint).\n"
    "  inspect: step, data position, tokenizer, seed, layout, model config, files with their checksums, and\n"
    "           every weight with its L2 norm and those of its Adam moments.\n"
    "  export:  verifies the checksums, then writes OUT_DIR/model.safetensors (all weights in one file, F32,\n"
    "           MODEL.md names; loads with moe-train --init-from) and OUT_DIR/config.json (the model\n"
    "           hyper-parameters). An existing OUT_DIR/model.safetensors is kept unless --force.\n";

constexpr const char* kProgram = "moe-checkpoint";

[[noreturn]] void fail(const std::string& msg) { exit_with_error(kProgram, msg); }

int64_t numel(const std::vector<int64_t>& shape) {
    return std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<int64_t>());
}

// The model or the optimizer parts of a checkpoint with their headers read;
// tensor data stays on disk until asked for.
class Parts {
public:
    Parts(const CheckpointInfo& info, bool optimizer) : dir_(info.dir) {
        for (int p = 0; p < info.expert_parallel; ++p)
            files_.emplace_back(info.dir + "/" + (optimizer ? info.optimizer_part(p) : info.model_part(p)));
    }
    // The part holding the tensor, or null.
    const SafetensorsFile* find(const std::string& name) const {
        for (const SafetensorsFile& f : files_)
            if (f.has(name)) return &f;
        return nullptr;
    }
    // Reads one F32 tensor: the only one in memory at a time.
    std::vector<float> read(const std::string& name) const {
        const SafetensorsFile* f = find(name);
        if (!f) throw CheckpointError("checkpoint '" + dir_ + "' lacks tensor '" + name + "': it is incomplete");
        std::vector<float> values(size_t(numel(f->info(name).shape)));
        f->read(name, "F32", f->info(name).shape, values.data());
        return values;
    }
    // A tensor of the files that is not in `expected` ("" if none): the files
    // are of another model than the config says.
    std::string unexpected(const std::vector<std::string>& expected) const {
        const std::set<std::string> known(expected.begin(), expected.end());
        for (const SafetensorsFile& f : files_)
            for (const std::string& name : f.names())
                if (!known.count(name)) return name;
        return "";
    }

private:
    std::string dir_;
    std::deque<SafetensorsFile> files_;  // deque: find() hands out stable pointers
};

double l2_norm(const std::vector<float>& values) {
    double sum = 0;
    for (float x : values) sum += double(x) * x;
    return std::sqrt(sum);
}

int inspect(const CheckpointInfo& info) {
    std::printf("checkpoint  %s\n", info.dir.c_str());
    std::printf("step        %d (%d non-finite steps skipped)\n", info.progress.step, info.progress.steps_skipped);
    std::printf("data        epoch %llu, %llu sequences of it consumed\n",
                static_cast<unsigned long long>(info.progress.data.epoch),
                static_cast<unsigned long long>(info.progress.data.cursor));
    std::printf("tokenizer   %s\n", info.progress.tokenizer.describe().c_str());
    std::printf("seed        %llu\n", static_cast<unsigned long long>(info.seed));
    std::printf("layout      world size %d, expert parallel %d\n", info.world_size, info.expert_parallel);
    // The model section as the config file spells it: to_yaml's lines from
    // "model:" to the blank line that ends every section.
    std::istringstream config(to_yaml(info.config));
    bool in_model = false;
    for (std::string line; std::getline(config, line);) {
        in_model = line == "model:" || (in_model && !line.empty());
        if (in_model) std::printf("%s\n", line.c_str());
    }

    std::string problem;  // the first one found: reported last, as the exit status's reason
    std::printf("files:\n");
    for (const CheckpointFile& f : info.files) {
        std::string verdict = "checksum ok";
        try {
            verify_checkpoint_file(info, f.name);
        } catch (const CheckpointError& e) {
            verdict = "checksum FAILED (corrupted)";
            if (problem.empty()) problem = e.what();
        }
        std::printf("  %-40s %12llu bytes  %s\n", f.name.c_str(), static_cast<unsigned long long>(f.bytes),
                    verdict.c_str());
    }

    const std::vector<std::string> names = model_tensor_names(info.config.model);
    const std::set<std::string> states = model_state_names(info.config.model);  // no moments: "-"
    const Parts weights(info, false), moments(info, true);
    size_t width = 0;
    for (const std::string& name : names) width = std::max(width, name.size());
    std::printf("tensors (L2 norms):\n  %-*s %-14s %12s %12s %12s\n", int(width), "name", "shape", "weight",
                "exp_avg", "exp_avg_sq");
    for (const std::string& name : names) {
        const auto lacks = [&](const std::string& key) {
            if (problem.empty()) problem = "checkpoint '" + info.dir + "' lacks tensor '" + key + "': it is incomplete";
        };
        const auto norm = [&](const Parts& parts, const std::string& key) {
            char text[32] = "missing";
            if (&parts == &moments && states.count(name)) return std::string("-");
            if (parts.find(key))
                std::snprintf(text, sizeof text, "%.6g", l2_norm(parts.read(key)));
            else
                lacks(key);
            return std::string(text);
        };
        const SafetensorsFile* f = weights.find(name);
        if (!f) {
            std::printf("  %-*s missing from every model part\n", int(width), name.c_str());
            lacks(name);
            continue;
        }
        std::printf("  %-*s %-14s %12s %12s %12s\n", int(width), name.c_str(), shape_text(f->info(name).shape).c_str(),
                    norm(weights, name).c_str(), norm(moments, "exp_avg." + name).c_str(),
                    norm(moments, "exp_avg_sq." + name).c_str());
    }
    if (!problem.empty()) fail(problem);
    return 0;
}

// The model section of the config as JSON: sections become nested objects.
// Scalars quoted in the YAML are strings; to_yaml writes the others (numbers,
// booleans) in JSON's own syntax, so they are copied as they are.
void append_json(std::string& out, const YAML::Node& map, int indent) {
    size_t i = 0;
    for (const auto& kv : map) {
        out += std::string(indent, ' ') + json_string(kv.first.as<std::string>()) + ": ";
        if (kv.second.IsMap()) {
            out += "{\n";
            append_json(out, kv.second, indent + 2);
            out += std::string(indent, ' ') + "}";
        } else {
            out += kv.second.IsNull()       ? "null"
                   : kv.second.Tag() == "!" ? json_string(kv.second.Scalar())
                                            : kv.second.Scalar();
        }
        out += ++i < map.size() ? ",\n" : "\n";
    }
}

std::string config_json(const Config& config) {
    std::string out = "{\n  \"architecture\": \"moe-inl\",\n  \"format_version\": 1,\n";
    append_json(out, YAML::Load(to_yaml(config))["model"], 2);
    return out + "}\n";
}

int export_model(const CheckpointInfo& info, const std::string& out_dir, bool force) {
    const std::string weights_path = out_dir + "/model.safetensors";
    std::error_code ec;
    if (!force && fs::exists(weights_path, ec)) fail("'" + weights_path + "' exists; pass --force to overwrite it");
    for (int p = 0; p < info.expert_parallel; ++p) verify_checkpoint_file(info, info.model_part(p));

    const Parts parts(info, false);
    const std::vector<std::string> names = model_tensor_names(info.config.model);
    const std::string stray = parts.unexpected(names);
    if (!stray.empty())
        fail("checkpoint '" + info.dir + "' holds tensor '" + stray + "' that its config's model does not have");
    std::deque<std::vector<float>> values;  // deque: the refs point into it as it grows
    std::vector<TensorRef> refs;
    int64_t count = 0;
    for (const std::string& name : names) {
        values.push_back(parts.read(name));
        refs.push_back({name, "F32", parts.find(name)->info(name).shape, values.back().data()});
        count += int64_t(values.back().size());
    }

    fs::create_directories(out_dir, ec);
    if (ec) fail("cannot create '" + out_dir + "' (" + ec.message() + "): check the path and permissions");
    write_safetensors(weights_path, refs,
                      {{"format", "moe-inl"},
                       {"step", std::to_string(info.progress.step)},
                       {kTokenizerMetadataKey, identity_yaml(info.progress.tokenizer)}});
    const std::string json = config_json(info.config);
    write_file_atomically(out_dir + "/config.json", {{json.data(), json.size()}});
    std::printf("moe-checkpoint: step %d of %s -> %s (%zu tensors, %lld parameters) and %s/config.json\n",
                info.progress.step, info.dir.c_str(), weights_path.c_str(), refs.size(),
                static_cast<long long>(count), out_dir.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) fail(std::string("no command\n") + kUsage);
    if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::fputs(kUsage, stdout);
        return 0;
    }
    const std::string command = args[0];
    if (command != "inspect" && command != "export") fail("unknown command '" + command + "'\n" + kUsage);
    std::string dir, out;
    bool force = false;
    for (size_t i = 1; i < args.size(); ++i) {
        if (args[i] == "--out" && command == "export") {
            if (i + 1 >= args.size()) fail("--out needs a directory");
            out = args[++i];
        } else if (args[i] == "--force" && command == "export") {
            force = true;
        } else if (args[i].rfind("-", 0) == 0 || !dir.empty()) {
            fail("unexpected argument '" + args[i] + "' for " + command + "\n" + kUsage);
        } else {
            dir = args[i];
        }
    }
    if (dir.empty()) fail(command + " needs a checkpoint or run directory\n" + kUsage);
    if (command == "export" && out.empty()) fail(std::string("export needs --out OUT_DIR\n") + kUsage);
    try {
        const CheckpointInfo info = open_checkpoint(dir);
        return command == "inspect" ? inspect(info) : export_model(info, out, force);
    } catch (const std::exception& e) {
        fail(e.what());
    }
}
