// moe-checkpoint (inspect, export) and moe-generate, run as processes on the
// checkpoints of a small byte-level model trained here: what they print, what
// export writes (exactly the checkpoint's weights, loadable by --init-from),
// reproducible sampling, and one-line refusals (exit 2) of broken checkpoints.
#include <algorithm>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "engine/io/checkpoint.h"
#include "engine/io/crc32c.h"
#include "engine/model/model.h"
#include "engine/io/safetensors.h"
#include "engine/run/backend.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"
#include "tools/checkpoint_reading.h"

using namespace moe;
using moe::test::contains;
using moe::test::ProgramResult;
using moe::test::run_program;
using moe::test::Stderr;
namespace fs = std::filesystem;

namespace {

ProgramResult checkpoint_tool(const std::vector<std::string>& args) { return run_program(MOE_CHECKPOINT_TOOL, args); }
// moe-generate; Stderr::apart keeps the text (stdout) apart from its speed report (stderr).
ProgramResult generate(const std::vector<std::string>& args, Stderr err = Stderr::merged) {
    return run_program(MOE_GENERATE_TOOL, args, err);
}

// A byte-level model of 4 experts trained 6 steps, a checkpoint every 3.
Config trained(const std::string& name) {
    Config c = moe::test::small_config(name);
    c.model.vocab_size = 256;
    c.data.tokenizer = "bytes";
    c.model.moe.num_experts = 4;
    c.checkpoint.every = 3;
    c.eval.every = 0;
    CpuOps ops;
    train(c, ops);
    return c;
}

std::string part(const char* kind, int p, int parts) {
    char name[64];
    std::snprintf(name, sizeof name, "%s-%05d-of-%05d.safetensors", kind, p, parts);
    return name;
}

// The checkpoint as two EP ranks would have saved it: experts 0-1 (with every
// replicated tensor) in part 0, experts 2-3 in part 1.
std::string in_two_parts(const std::string& src, const std::string& dst) {
    fs::create_directories(dst);
    YAML::Node files;
    for (const char* kind : {"model", "optimizer"}) {
        const SafetensorsFile file(src + "/" + part(kind, 0, 1));
        std::deque<std::vector<char>> data;
        std::vector<TensorRef> parts[2];
        for (const std::string& name : file.names()) {
            const size_t at = name.find(".experts.");
            const int p = at != std::string::npos && std::stoi(name.substr(at + 9)) >= 2;
            data.push_back(file.read_raw(name));
            parts[p].push_back({name, "F32", file.info(name).shape, data.back().data()});
        }
        for (int p = 0; p < 2; ++p) {
            const FileDigest d = write_safetensors(dst + "/" + part(kind, p, 2), parts[p]);
            char hex[9];
            std::snprintf(hex, sizeof hex, "%08x", d.crc32c);
            YAML::Node f;
            f["name"] = part(kind, p, 2);
            f["bytes"] = d.bytes;
            f["crc32c"] = std::string(hex);
            files.push_back(f);
        }
    }
    YAML::Node info = YAML::LoadFile(src + "/checkpoint.yaml");
    info["layout"]["world_size"] = 2;
    info["layout"]["expert_parallel"] = 2;
    info["files"] = files;
    info.remove("checksum");
    const std::string body = YAML::Dump(info) + "\n";
    char checksum[32];
    std::snprintf(checksum, sizeof checksum, "checksum: %08x\n", crc32c(0, body.data(), body.size()));
    std::ofstream(dst + "/checkpoint.yaml") << body << checksum;
    return dst;
}

void flip_last_byte(const std::string& path) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-1, std::ios::end);
    const char c = char(f.get() ^ 0x40);
    f.seekp(-1, std::ios::end);
    f.put(c);
}

std::vector<std::string> weight_names(const Config& c) {
    CpuOps ops;
    Model model(c.model, ops, DType::F32, 1, 1);
    std::vector<std::string> names;
    for (const NamedTensor& t : model.params().named(ParameterSet::Slot::Value)) names.push_back(t.name);
    return names;
}

}  // namespace

TEST_CASE("the tools' name list is the model's own, in MODEL.md's order", "[unit]") {
    Config c = moe::test::small_config_at("unused");
    const auto same = [](std::vector<std::string> a, std::vector<std::string> b) {
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        return a == b;
    };
    REQUIRE(same(model_tensor_names(c.model), weight_names(c)));
    c.model.qk_norm = true;
    c.model.tie_embeddings = true;
    c.model.moe.router = moe::RouterKind::token_id;
    c.model.moe.top_k = 1;
    c.model.dynamics.shared = false;
    REQUIRE(same(model_tensor_names(c.model), weight_names(c)));
    c.model.dynamics.enabled = false;
    REQUIRE(same(model_tensor_names(c.model), weight_names(c)));

    // MODEL.md's list, written out for one layer of two experts.
    Config one = moe::test::small_config_at("unused");
    one.model.num_layers = 1;
    one.model.moe.num_experts = 2;
    one.model.qk_norm = true;
    const std::vector<std::string> shared = {
        "embed.weight", "layers.0.attn_norm.weight", "layers.0.attn.wq", "layers.0.attn.wk", "layers.0.attn.wv",
        "layers.0.attn.wo", "layers.0.attn.q_norm.weight", "layers.0.attn.k_norm.weight", "layers.0.moe_norm.weight",
        "layers.0.moe.router.weight", "layers.0.moe.experts.0.w_gate", "layers.0.moe.experts.0.w_up",
        "layers.0.moe.experts.0.w_down", "layers.0.moe.experts.1.w_gate", "layers.0.moe.experts.1.w_up",
        "layers.0.moe.experts.1.w_down", "dynamics.mu", "dynamics.c1.weight", "dynamics.c1.bias",
        "dynamics.c2.weight", "dynamics.c2.bias", "norm.weight", "lm_head.weight"};
    REQUIRE(model_tensor_names(one.model) == shared);
    one.model.dynamics.shared = false;
    std::vector<std::string> per_layer = shared;
    for (std::string& name : per_layer)
        if (name.rfind("dynamics.", 0) == 0) name = "layers.0." + name;
    REQUIRE(model_tensor_names(one.model) == per_layer);
}

TEST_CASE("moe-checkpoint inspects and exports checkpoints of any layout", "[unit]") {
    const Config c = trained("tools-export");
    const std::string latest = latest_checkpoint(c.run.out_dir);
    REQUIRE(fs::path(latest).filename() == "step-00000006");
    const std::string two = in_two_parts(latest, c.run.out_dir + "-two-parts/step-00000006");

    SECTION("inspect: progress, config, checksums and every tensor, for a run or a checkpoint directory") {
        for (const std::string& dir : {c.run.out_dir, two}) {
            const ProgramResult r = checkpoint_tool({"inspect", dir});
            INFO(r.output);
            REQUIRE(r.exit_code == 0);
            REQUIRE(contains(r.output, "step        6"));
            REQUIRE(contains(r.output, "    num_experts: 4"));
            REQUIRE(contains(r.output, "checksum ok"));
            REQUIRE(!contains(r.output, "FAILED"));
            REQUIRE(!contains(r.output, "missing"));
            size_t at = 0;  // every tensor, in MODEL.md order
            for (const std::string& name : model_tensor_names(c.model)) {
                at = r.output.find("\n  " + name + " ", at);
                REQUIRE(at != std::string::npos);
            }
        }
        REQUIRE(contains(checkpoint_tool({"inspect", two}).output, "world size 2, expert parallel 2"));
    }

    SECTION("generate reads the parts of any layout") {
        const ProgramResult one =
            generate({latest, "--prompt", "abc", "--tokens", "8", "--temperature", "0"}, Stderr::apart);
        REQUIRE(one.exit_code == 0);
        REQUIRE(generate({two, "--prompt", "abc", "--tokens", "8", "--temperature", "0"}, Stderr::apart).output ==
                one.output);
    }

    SECTION("export merges the parts into the checkpoint's weights, which --init-from loads") {
        const std::string out = c.run.out_dir + "-export";
        fs::remove_all(out);
        const ProgramResult r = checkpoint_tool({"export", two, "--out", out});
        INFO(r.output);
        REQUIRE(r.exit_code == 0);
        const SafetensorsFile exported(out + "/model.safetensors"), saved(latest + "/" + part("model", 0, 1));
        REQUIRE(exported.names() == model_tensor_names(c.model));
        for (const std::string& name : saved.names()) {
            REQUIRE(exported.info(name).dtype == "F32");
            REQUIRE(exported.read_raw(name) == saved.read_raw(name));  // bit for bit
        }
        const YAML::Node json = YAML::LoadFile(out + "/config.json");  // JSON is YAML
        REQUIRE(json["architecture"].as<std::string>() == "moe-inl");
        REQUIRE(json["format_version"].as<int>() == 1);
        REQUIRE(json["vocab_size"].as<int>() == 256);
        REQUIRE(json["moe"]["num_experts"].as<int>() == 4);
        REQUIRE(json["moe"]["router"].as<std::string>() == "learned");
        REQUIRE(json["moe"]["capacity_factor"].IsNull());
        REQUIRE(json["dynamics"]["controller_size"].as<int>() == 16);

        Config fresh = c;
        fresh.run.out_dir = c.run.out_dir + "-from-export";
        fresh.train.steps = 2;
        fresh.optimizer.warmup_steps = 1;
        fresh.checkpoint.every = 0;
        TrainOptions opts;
        opts.init_from = out + "/model.safetensors";
        CpuOps ops;
        REQUIRE_NOTHROW(train(fresh, ops, opts));

        const ProgramResult again = checkpoint_tool({"export", two, "--out", out});
        REQUIRE(again.exit_code == 2);
        REQUIRE(contains(again.output, "--force"));
        REQUIRE(checkpoint_tool({"export", two, "--out", out, "--force"}).exit_code == 0);
    }
}

TEST_CASE("moe-generate samples reproducibly from a checkpoint", "[unit]") {
    const Config c = trained("tools-generate");
    const std::string prompt = "a 'quoted' prompt";
    const auto run = [&](std::vector<std::string> extra) {
        std::vector<std::string> args = {c.run.out_dir, "--prompt", prompt, "--tokens", "24"};
        args.insert(args.end(), extra.begin(), extra.end());
        const ProgramResult r = generate(args, Stderr::apart);
        INFO(r.output << r.errors);
        REQUIRE(r.exit_code == 0);
        REQUIRE(r.output.size() == prompt.size() + 24);  // the prompt, then 24 bytes
        REQUIRE(r.output.compare(0, prompt.size(), prompt) == 0);
        return r;
    };
    const auto text = [&](std::vector<std::string> extra) { return run(extra).output; };
    REQUIRE(text({"--temperature", "0"}) == text({"--temperature", "0", "--seed", "9"}));  // greedy: no draws
    REQUIRE(text({"--seed", "7"}) == text({"--seed", "7"}));
    REQUIRE(text({"--seed", "7", "--top-k", "0"}) != text({"--seed", "8", "--top-k", "0"}));
    REQUIRE(text({"--seed", "7", "--top-p", "0.9"}) == text({"--seed", "7", "--top-p", "0.9", "--device", "cpu"}));
    // The speed report, on stderr only: one line. The prompt (17 bytes) keeps
    // its last 16 (train.seq_len); tokens 1, 10 and 19 find the cache full.
    const std::string report = run({"--top-k", "5", "--top-p", "0.5"}).errors;
    INFO(report);
    REQUIRE(contains(report, "moe-generate: cpu: prompt of 16 tokens prefilled in "));
    REQUIRE(contains(report, "; 24 tokens generated in "));
    REQUIRE(contains(report, " tokens/s; cache restarts: 3 (24 positions prefilled again))\n"));
    REQUIRE(std::count(report.begin(), report.end(), '\n') == 1);

    // A context longer than train.seq_len (16) keeps its last 16 tokens; the
    // second token finds the cache full and restarts it from the last 8.
    const ProgramResult longer =
        generate({c.run.out_dir, "--prompt", std::string(40, 'x'), "--tokens", "3"}, Stderr::apart);
    INFO(longer.errors);
    REQUIRE(longer.exit_code == 0);
    REQUIRE(longer.output.size() == 43);
    REQUIRE(contains(longer.errors, "prompt of 16 tokens prefilled"));
    REQUIRE(contains(longer.errors, "; cache restarts: 1 (8 positions prefilled again)"));
}

TEST_CASE("moe-generate refuses bad sampling and device flags with one line", "[unit]") {
    const Config c = trained("tools-generate-flags");
    const auto refused = [&](const std::vector<std::string>& extra, const std::string& why) {
        std::vector<std::string> args = {c.run.out_dir, "--prompt", "x"};
        args.insert(args.end(), extra.begin(), extra.end());
        const ProgramResult r = generate(args);
        INFO(r.output);
        REQUIRE(r.exit_code == 2);
        REQUIRE(contains(r.output, why));
        REQUIRE(std::count(r.output.begin(), r.output.end(), '\n') == 1);
    };
    refused({"--top-k", "-1"}, "moe-generate: --top-k takes an integer >= 0, got '-1'");
    refused({"--top-p", "0"}, "moe-generate: --top-p takes a number in (0, 1], got '0'");
    refused({"--top-p", "1.5"}, "moe-generate: --top-p takes a number in (0, 1], got '1.5'");
    refused({"--device", "tpu"}, "moe-generate: --device takes cpu, cuda or auto, got 'tpu'");
    if (!gpu_memory()) {  // where a GPU is visible, --device cuda runs
        refused({"--device", "cuda"}, cuda_backend_built() ? "moe-generate: --device cuda: no GPU is visible"
                                                           : "moe-generate: --device cuda: this build has no CUDA");
    }
}

TEST_CASE("moe-generate reads and writes token ids for vocabularies other than bytes", "[unit]") {
    Config c = moe::test::small_config("tools-ids");  // vocab 16
    c.train.steps = 2;
    c.optimizer.warmup_steps = 1;
    c.eval.every = 0;
    CpuOps ops;
    train(c, ops);
    const ProgramResult r = generate({c.run.out_dir, "--prompt", "1 2  3", "--tokens", "5"}, Stderr::apart);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    REQUIRE(r.output.rfind("1 2 3 ", 0) == 0);
    std::vector<int> ids;
    std::istringstream printed(r.output);
    for (int id; printed >> id;) ids.push_back(id);
    REQUIRE(ids.size() == 8);
    for (int id : ids) REQUIRE((id >= 0 && id < 16));
    const ProgramResult bad = generate({c.run.out_dir, "--prompt", "1 16"});
    REQUIRE(bad.exit_code == 2);
    REQUIRE(contains(bad.output, "token ids in [0, 16)"));
}

TEST_CASE("broken checkpoints are refused with one line naming the problem", "[unit]") {
    const Config c = trained("tools-broken");
    const std::string good = latest_checkpoint(c.run.out_dir);
    const std::string dir = c.run.out_dir + "-corrupted/step-00000006";
    fs::create_directories(dir);
    fs::copy(good, dir, fs::copy_options::recursive);
    const std::string file = part("model", 0, 1);
    flip_last_byte(dir + "/" + file);

    SECTION("a corrupted part: inspect reports it, export and generate refuse") {
        const ProgramResult inspect = checkpoint_tool({"inspect", dir});
        INFO(inspect.output);
        REQUIRE(inspect.exit_code == 2);
        REQUIRE(contains(inspect.output, file + " "));
        REQUIRE(contains(inspect.output, "checksum FAILED"));
        REQUIRE(contains(inspect.output, "lm_head.weight"));  // the report is still whole
        REQUIRE(contains(inspect.output, "moe-checkpoint: checkpoint '" + dir + "': file " + file + " is corrupted"));

        for (const ProgramResult& r : {checkpoint_tool({"export", dir, "--out", dir + "-export"}),
                                generate({dir, "--prompt", "x", "--tokens", "2"})}) {
            INFO(r.output);
            REQUIRE(r.exit_code == 2);
            REQUIRE(contains(r.output, "file " + file + " is corrupted"));
            REQUIRE(std::count(r.output.begin(), r.output.end(), '\n') == 1);  // one line, no trace
        }
        REQUIRE(!fs::exists(dir + "-export/model.safetensors"));
    }

    SECTION("missing, incomplete and truncated checkpoints, and bad arguments") {
        const auto refused = [](const ProgramResult& r, const std::string& why) {
            INFO(r.output);
            REQUIRE(r.exit_code == 2);
            REQUIRE(contains(r.output, why));
        };
        refused(checkpoint_tool({"inspect", dir + "-nowhere"}), "no such directory");
        refused(generate({c.run.out_dir + "-corrupted", "--prompt", "x"}), "no checkpoint.yaml and no checkpoints/");
        fs::remove(dir + "/checkpoint.yaml");
        refused(checkpoint_tool({"inspect", dir}), "has no checkpoint.yaml");
        fs::copy(good + "/checkpoint.yaml", dir + "/checkpoint.yaml");
        fs::resize_file(dir + "/" + file, 100);
        refused(checkpoint_tool({"export", dir, "--out", dir + "-export"}), "has 100 bytes");
        refused(checkpoint_tool({"export", dir}), "export needs --out");
        refused(checkpoint_tool({"unpack", dir}), "unknown command 'unpack'");
        refused(generate({dir}), "--prompt TEXT is required");
        refused(generate({c.run.out_dir, "--prompt", "x", "--temperature", "-1"}), "--temperature takes a number >= 0");
    }
}
