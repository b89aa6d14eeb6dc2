// Checkpoints in one process: what a save writes, exact resume, pruning, and
// every way a checkpoint or a run directory is refused.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/checkpoint.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;
using moe::test::contains;
using moe::test::error_of;
namespace fs = std::filesystem;

namespace {

std::string read_text(const std::string& path) {
    std::ifstream f(path);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

// A finished run of 8 steps with a checkpoint every 4: step-4 and step-8.
Config trained_run(const std::string& name, CpuOps& ops) {
    Config c = moe::test::small_config(name);
    c.train.steps = 8;
    c.checkpoint.every = 4;
    train(c, ops);
    return c;
}

std::string step_dir(const Config& c, int step) {
    char name[32];
    std::snprintf(name, sizeof name, "/step-%08d", step);
    return checkpoints_dir(c.run.out_dir) + name;
}

void flip_byte(const std::string& path, uint64_t offset) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(std::streamoff(offset));
    char b = 0;
    f.read(&b, 1);
    b = char(b ^ 0x5a);
    f.seekp(std::streamoff(offset));
    f.write(&b, 1);
}

}  // namespace

TEST_CASE("a save writes its parts, checkpoint.yaml and latest, and prunes old ones", "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("ckpt-save");
    c.train.steps = 6;
    c.checkpoint.every = 2;
    c.checkpoint.keep = 2;
    const TrainSummary s = train(c, ops);

    const std::string root = checkpoints_dir(c.run.out_dir);
    std::vector<std::string> entries;
    for (const auto& e : fs::directory_iterator(root)) entries.push_back(e.path().filename().string());
    std::sort(entries.begin(), entries.end());
    CHECK(entries == std::vector<std::string>{"latest", "step-00000004", "step-00000006"});
    CHECK(read_text(root + "/latest") == "step-00000006\n");
    CHECK(latest_checkpoint(c.run.out_dir) == step_dir(c, 6));
    CHECK(s.checkpoint == step_dir(c, 6));

    const CheckpointInfo info = read_checkpoint_info(step_dir(c, 6));
    CHECK(info.progress.step == 6);
    CHECK(info.progress.data.cursor == 6 * 4);  // sequences consumed
    CHECK(info.world_size == 1);
    CHECK(info.expert_parallel == 1);
    CHECK(info.seed == c.run.seed);
    CHECK(model_difference(info.config, c).empty());
    Config changed = c;
    changed.train.steps = 9;
    CHECK(config_differences(info.config, changed) ==
          std::vector<std::string>{"train.steps is 6 in the checkpoint but 9 in the config"});
    REQUIRE(info.files.size() == 2);
    CHECK(info.files[0].name == "model-00000-of-00001.safetensors");
    CHECK(info.files[1].name == "optimizer-00000-of-00001.safetensors");
    for (const CheckpointFile& f : info.files) CHECK_NOTHROW(verify_checkpoint_file(info, f.name));
}

TEST_CASE("a run resumed from a checkpoint gives the losses of one that never stopped", "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("ckpt-exact");
    c.train.steps = 8;
    c.checkpoint.every = 4;
    const TrainSummary straight = train(c, ops);
    REQUIRE(straight.losses.size() == 8);

    Config resumed = c;
    resumed.run.out_dir += "-resumed";
    TrainOptions opts;
    opts.resume = step_dir(c, 4);
    const TrainSummary rest = train(resumed, ops, opts);
    CHECK(rest.first_step == 4);
    REQUIRE(rest.losses.size() == 4);
    for (size_t i = 0; i < 4; ++i) CHECK(rest.losses[i] == straight.losses[4 + i]);  // bit for bit
    CHECK(rest.val_loss == straight.val_loss);

    // --resume auto picks the newest; at the end there is nothing left to do.
    opts.resume = "auto";
    const TrainSummary again = train(resumed, ops, opts);
    CHECK(again.first_step == 8);
    CHECK(again.losses.empty());
    CHECK(again.val_loss == straight.val_loss);
}

TEST_CASE("resume auto starts fresh without a checkpoint, and a fresh start never overwrites one", "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("ckpt-fresh");
    c.train.steps = 2;
    TrainOptions opts;
    opts.resume = "auto";
    CHECK(train(c, ops, opts).first_step == 0);
    const std::string message = error_of<TrainingError>([&] { train(c, ops); });
    CHECK(contains(message, "already holds checkpoints"));
    CHECK(contains(message, "--resume auto"));
}

TEST_CASE("latest naming a missing checkpoint falls back to the newest complete one", "[unit]") {
    CpuOps ops;
    const Config c = trained_run("ckpt-latest", ops);
    std::ofstream(checkpoints_dir(c.run.out_dir) + "/latest") << "step-00000099\n";
    CHECK(latest_checkpoint(c.run.out_dir) == step_dir(c, 8));
    // A save that died before publishing leaves no checkpoint.yaml: ignored.
    fs::create_directories(step_dir(c, 12));
    CHECK(latest_checkpoint(c.run.out_dir) == step_dir(c, 8));
}

TEST_CASE("damaged or foreign checkpoints are refused with a message naming the problem", "[unit]") {
    CpuOps ops;
    const Config c = trained_run("ckpt-refuse", ops);
    const std::string dir = step_dir(c, 8);
    const std::string part = dir + "/model-00000-of-00001.safetensors";
    Config resumed = c;
    resumed.run.out_dir += "-resumed";
    TrainOptions opts;
    opts.resume = dir;
    const auto refusal = [&] { return error_of<CheckpointError>([&] { train(resumed, ops, opts); }); };

    SECTION("another model") {
        resumed.model.hidden_size = 64;
        CHECK(contains(refusal(), "is of another model: model.hidden_size is 32 in the checkpoint but 64 in the config"));
    }
    SECTION("a flipped byte") {
        flip_byte(part, fs::file_size(part) / 2);
        CHECK(contains(refusal(), "model-00000-of-00001.safetensors is corrupted"));
    }
    SECTION("a truncated file") {
        fs::resize_file(part, fs::file_size(part) - 10);
        CHECK(contains(refusal(), "has " + std::to_string(fs::file_size(part)) + " bytes instead of"));
    }
    SECTION("a missing file") {
        fs::remove(dir + "/optimizer-00000-of-00001.safetensors");
        CHECK(contains(refusal(), "optimizer-00000-of-00001.safetensors is missing"));
    }
    SECTION("no checkpoint.yaml: a save that did not finish") {
        fs::remove(dir + "/checkpoint.yaml");
        CHECK(contains(refusal(), "it is incomplete"));
    }
    SECTION("a damaged checkpoint.yaml") {
        std::ofstream(dir + "/checkpoint.yaml") << "format: moe-checkpoint 1\nstep: [\n";
        CHECK(contains(refusal(), "checkpoint.yaml is damaged"));
    }
    SECTION("no such directory") {
        opts.resume = dir + "-nope";
        CHECK(contains(refusal(), "no such directory"));
    }
}

TEST_CASE("a save that cannot be written stops the run and keeps the previous checkpoint", "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("ckpt-unwritable");
    c.train.steps = 4;
    // Where the checkpoints would go, a file stands: the save cannot create its directory.
    fs::create_directories(c.run.out_dir);
    std::ofstream(checkpoints_dir(c.run.out_dir)) << "in the way\n";
    const std::string message = error_of<CheckpointError>([&] { train(c, ops); });
    CHECK(contains(message, "checkpoint of step 4 not saved"));
    CHECK(contains(message, "there is no earlier checkpoint"));
}

TEST_CASE("a disk that fills during a save keeps the previous checkpoint", "[unit]") {
    CpuOps ops;
    const Config c = trained_run("ckpt-disk-full", ops);  // checkpoints at steps 4 and 8
    const std::string good = latest_checkpoint(c.run.out_dir);
    Config longer = c;
    longer.train.steps = 12;
    TrainOptions opts;
    opts.resume = "auto";

    // Files of this process may not grow past 64 KiB, so the model parts of
    // the next save fail (EFBIG, as ENOSPC would) and the metrics do not.
    std::string message;
    {
        const moe::test::FileSizeLimit full_disk(64 * 1024);
        message = moe::test::error_of<CheckpointError>([&] { train(longer, ops, opts); });
    }

    CHECK(contains(message, "checkpoint of step 12 not saved"));
    CHECK(contains(message, "File too large"));
    CHECK(contains(message, "step-00000008' is intact"));
    CHECK(latest_checkpoint(c.run.out_dir) == good);
    const CheckpointInfo info = read_checkpoint_info(good);
    for (const CheckpointFile& f : info.files) CHECK_NOTHROW(verify_checkpoint_file(info, f.name));
    CHECK_FALSE(fs::exists(step_dir(c, 12) + ".tmp"));
}
