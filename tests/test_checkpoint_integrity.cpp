// What a checkpoint must not let through: an edited or damaged
// checkpoint.yaml, a resume that would skip or repeat data, a damaged
// directory that blocks later saves, a `latest` that could not be written;
// checkpoints of format 1 (FNV-1a) still resume; CRC-32C's own values.
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "comm/fnv1a.h"
#include "engine/io/checkpoint.h"
#include "engine/io/crc32c.h"
#include "engine/io/files.h"
#include "engine/io/metrics.h"
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

std::string read_text(const std::string& path) { return read_small_file(path, 1 << 24); }

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// A finished run of 8 steps with a checkpoint every 4: step-4 and step-8.
Config trained_run(const std::string& name, CpuOps& ops) {
    Config c = moe::test::small_config(name);
    c.train.steps = 8;
    c.checkpoint.every = 4;
    c.checkpoint.keep = 3;
    train(c, ops);
    return c;
}

std::string step_dir(const Config& c, int step) {
    char name[32];
    std::snprintf(name, sizeof name, "/step-%08d", step);
    return checkpoints_dir(c.run.out_dir) + name;
}

// checkpoint.yaml with `from` replaced by `to`, its checksum line recomputed
// (a consistent file with a wrong value) or left as it was (an edit).
void edit_info(const std::string& dir, const std::string& from, const std::string& to, bool recompute) {
    std::string text = read_text(dir + "/checkpoint.yaml");
    const size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    if (recompute) {
        const size_t line = text.rfind("\nchecksum: ");
        const std::string body = text.substr(0, line + 1);
        char checksum[32];
        std::snprintf(checksum, sizeof checksum, "checksum: %08x\n", crc32c(0, body.data(), body.size()));
        text = body + checksum;
    }
    write_text(dir + "/checkpoint.yaml", text);
}

// Resumes a copy of the run (out_dir + suffix) from dir with cfg.
TrainSummary resume_from(Config cfg, CpuOps& ops, const std::string& dir, const std::string& suffix) {
    cfg.run.out_dir += suffix;
    TrainOptions opts;
    opts.resume = dir;
    return train(cfg, ops, opts);
}

}  // namespace

TEST_CASE("CRC-32C has its standard values, whole, combined and split over threads", "[unit]") {
    CHECK(crc32c(0, "123456789", 9) == 0xE3069283u);  // the check value of the Castagnoli CRC
    CHECK(crc32c(0, "", 0) == 0u);
    std::vector<unsigned char> zeros(32, 0);
    CHECK(crc32c(0, zeros.data(), zeros.size()) == 0x8A9136AAu);  // RFC 3720 B.4: 32 bytes of zeros
    std::vector<unsigned char> data(size_t(40) << 20);
    std::mt19937_64 gen(7);
    for (auto& b : data) b = static_cast<unsigned char>(gen());
    const uint32_t whole = crc32c(0, data.data(), data.size());
    for (size_t cut : {size_t(0), size_t(1), size_t(7), size_t(12345), data.size() / 2 + 3, data.size()}) {
        INFO("cut at " << cut);
        const uint32_t a = crc32c(0, data.data(), cut), b = crc32c(0, data.data() + cut, data.size() - cut);
        CHECK(crc32c_combine(a, b, data.size() - cut) == whole);
        CHECK(crc32c(a, data.data() + cut, data.size() - cut) == whole);  // continued
    }
    CHECK(crc32c_parallel(0, data.data(), data.size()) == whole);
    Crc32c streamed;
    streamed.update(data.data(), 1000);
    streamed.update(data.data() + 1000, data.size() - 1000);
    CHECK(streamed.value() == whole);
    // A file, read and checksummed in pieces over the threads (the last one short).
    const std::string path = moe::test::fresh_dir("integrity", "crc") + "/data.bin";
    const FileDigest written = write_file_atomically(path, {{data.data(), data.size() - 12345}});
    const FileDigest read = digest_file(path);
    CHECK(written.crc32c == crc32c(0, data.data(), data.size() - 12345));
    CHECK(read.crc32c == written.crc32c);
    CHECK(read.bytes == data.size() - 12345);
}

TEST_CASE("an edited or inconsistent checkpoint.yaml is refused before anything is changed", "[unit]") {
    CpuOps ops;
    const Config c = trained_run("integrity-edited", ops);
    const std::string dir = step_dir(c, 8);
    const std::string metrics_before = read_text(c.run.out_dir + "/metrics.jsonl");
    const auto refused = [&] {
        Config again = c;
        again.train.steps = 12;
        TrainOptions opts;
        opts.resume = dir;
        return error_of<CheckpointError>([&] { train(again, ops, opts); });
    };

    SECTION("an edit (the step, the cursor) breaks its checksum") {
        edit_info(dir, "cursor: 32", "cursor: 12", false);
        CHECK(contains(refused(), "checkpoint.yaml does not match its checksum: it was edited or damaged"));
    }
    SECTION("a step that disagrees with the directory") {
        edit_info(dir, "step: 8", "step: 5", true);
        CHECK(contains(refused(), "damaged (step 5 but the directory is step 8)"));
    }
    SECTION("a negative step, which once emptied metrics.jsonl") {
        edit_info(dir, "step: 8", "step: -5", true);
        CHECK(contains(refused(), "damaged (step -5 is negative)"));
    }
    SECTION("steps_skipped past the step") {
        edit_info(dir, "steps_skipped: 0", "steps_skipped: 9", true);
        CHECK(contains(refused(), "steps_skipped 9 outside [0, step]"));
    }
    SECTION("a seed that is not its config's") {
        edit_info(dir, "seed: 1234\n", "seed: 99\n", true);
        CHECK(contains(refused(), "seed differs from its config's run.seed"));
    }
    SECTION("a file name that leaves the directory") {
        edit_info(dir, "name: optimizer-00000-of-00001.safetensors", "name: ../optimizer-00000-of-00001.safetensors",
                  true);
        CHECK(contains(refused(), "is not a name within the directory"));
    }
    SECTION("cut short: the checksum line is gone") {
        std::string text = read_text(dir + "/checkpoint.yaml");
        write_text(dir + "/checkpoint.yaml", text.substr(0, text.rfind("checksum: ")));
        CHECK(contains(refused(), "checkpoint.yaml has no checksum line"));
    }
    // Nothing of the run was touched.
    CHECK(read_text(c.run.out_dir + "/metrics.jsonl") == metrics_before);
}

TEST_CASE("a resume that would skip or repeat sequences is refused, one that keeps the order is not", "[unit]") {
    CpuOps ops;
    const Config c = trained_run("integrity-data", ops);
    const std::string dir = step_dir(c, 4);
    Config next = c;
    next.train.steps = 8;

    SECTION("another seed or sequence length: another data order") {
        Config other = next;
        other.run.seed = 7;
        CHECK(contains(error_of<CheckpointError>([&] { resume_from(other, ops, dir, "-seed"); }),
                       "continues another data order: run.seed is 1234 in the checkpoint but 7 in the config"));
        other = next;
        other.train.seq_len = 8;
        CHECK(contains(error_of<CheckpointError>([&] { resume_from(other, ops, dir, "-seq"); }),
                       "continues another data order: train.seq_len is 16"));
    }
    SECTION("other shards, or more of them") {
        const std::string data = fs::path(c.data.train).parent_path().string();
        const std::string more = moe::test::fresh_dir("integrity", "more-data");
        fs::copy(data + "/train_000000.bin", more + "/train_000000.bin");
        fs::copy(data + "/train_000000.bin", more + "/train_000001.bin");
        Config other = next;
        other.data.train = more + "/train_*.bin";
        const std::string message = error_of<CheckpointError>([&] { resume_from(other, ops, dir, "-more"); });
        CHECK(contains(message, "counts its data position in other shards: 1 shard(s) of 6000 tokens then, "
                                "2 shard(s) of 12000 tokens"));
        CHECK(contains(message, "--init-from"));
    }
    SECTION("the same shards in another folder, or a larger batch: resumed, the order kept") {
        const std::string data = fs::path(c.data.train).parent_path().string();
        const std::string moved = moe::test::fresh_dir("integrity", "moved-data");
        fs::copy(data + "/train_000000.bin", moved + "/train_000000.bin");
        Config other = next;
        other.data.train = moved + "/train_*.bin";
        other.train.micro_batch_size = 8;
        const TrainSummary s = resume_from(other, ops, dir, "-moved");
        CHECK(s.first_step == 4);
        CHECK(s.losses.size() == 4);
    }
}

TEST_CASE("a checkpoint of format 1 (FNV-1a, no self-checksum) still resumes, and its checksums still bite",
          "[unit]") {
    CpuOps ops;
    const Config c = trained_run("integrity-format1", ops);
    Config longer = c;
    longer.train.steps = 12;
    const std::string dir = step_dir(c, 8);
    const TrainSummary reference = resume_from(longer, ops, dir, "-from-format2");

    // step-8 as the engine of format 1 wrote it.
    std::string text = read_text(dir + "/checkpoint.yaml");
    text = text.substr(0, text.rfind("checksum: "));
    const auto replace = [&](const std::string& from, const std::string& to) {
        const size_t at = text.find(from);
        REQUIRE(at != std::string::npos);
        text.replace(at, from.size(), to);
    };
    replace("moe-checkpoint 2", "moe-checkpoint 1");
    const size_t data_of = text.find("data_of: ");
    text.erase(data_of, text.find("steps_skipped") - data_of);
    for (const char* part : {"model-00000-of-00001.safetensors", "optimizer-00000-of-00001.safetensors"}) {
        const size_t at = text.find(std::string(part) + ", bytes:");
        const size_t key = text.find("crc32c: ", at);
        char fnv[32];
        std::snprintf(fnv, sizeof fnv, "fnv1a: %016llx",
                      static_cast<unsigned long long>(fnv1a_of_file(dir + "/" + part)));
        text.replace(key, text.find('}', key) - key, fnv);
    }
    write_text(dir + "/checkpoint.yaml", text);
    REQUIRE(read_checkpoint_info(dir).format == 1);

    const TrainSummary rest = resume_from(longer, ops, dir, "-from-format1");
    REQUIRE(rest.losses.size() == 4);
    CHECK(rest.losses == reference.losses);  // bit for bit

    std::fstream f(dir + "/model-00000-of-00001.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
    f.close();
    CHECK(contains(error_of<CheckpointError>([&] { resume_from(longer, ops, dir, "-again"); }), "is corrupted"));
}

TEST_CASE("a checkpoint of another tokenizer is refused naming both", "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("integrity-tokenizer");
    c.model.vocab_size = 256;  // the pattern's ids are bytes too
    c.data.tokenizer = "bytes";
    c.train.steps = 4;
    train(c, ops);
    CHECK(read_checkpoint_info(step_dir(c, 4)).progress.tokenizer.same_as(TokenizerIdentity{}));
    Config ids = c;
    ids.data.tokenizer = "none";
    ids.train.steps = 8;
    CHECK(error_of<CheckpointError>([&] { resume_from(ids, ops, step_dir(c, 4), "-as-ids"); }) ==
          "checkpoint '" + step_dir(c, 4) + "' was trained with tokenizer bytes (256 tokens) but data.tokenizer is none "
          "(ids made elsewhere): set data.tokenizer to the tokenizer it was trained with, or start a new run without "
          "its weights");
}

TEST_CASE("a checkpoint from before tokenizers is byte-level for vocab 256, ids made elsewhere otherwise",
          "[unit]") {
    CpuOps ops;
    const Config c = trained_run("integrity-no-tokenizer", ops);  // vocab 16, data.tokenizer none
    const std::string dir = step_dir(c, 8);
    edit_info(dir, "tokenizer: {kind: none, file: \"\", crc32c: 00000000, vocab: 0}  # what the ids mean\n", "",
              /*recompute=*/true);
    REQUIRE_FALSE(contains(read_text(dir + "/checkpoint.yaml"), "tokenizer: {"));
    CHECK(read_checkpoint_info(dir).progress.tokenizer.same_as(TokenizerIdentity{"none", "", 0, 0}));
    Config longer = c;
    longer.train.steps = 10;
    CHECK(resume_from(longer, ops, dir, "-resumed").losses.size() == 2);

    edit_info(dir, "vocab_size: 16", "vocab_size: 256", /*recompute=*/true);  // the config it holds
    CHECK(read_checkpoint_info(dir).progress.tokenizer.same_as(TokenizerIdentity{}));
}

TEST_CASE("a damaged directory where the next checkpoint goes is moved aside, and saving goes on", "[unit]") {
    CpuOps ops;
    Config c = trained_run("integrity-damaged", ops);
    const std::string root = checkpoints_dir(c.run.out_dir);
    // Where steps 12 and 16 will be saved: a directory without checkpoint.yaml
    // and a link to nowhere.
    fs::create_directories(step_dir(c, 12));
    write_text(step_dir(c, 12) + "/model-00000-of-00001.safetensors", "partial");
    fs::create_symlink(root + "/nowhere", step_dir(c, 16));
    c.train.steps = 16;
    TrainOptions opts;
    opts.resume = "auto";
    const TrainSummary s = train(c, ops, opts);
    CHECK(s.checkpoint == step_dir(c, 16));
    CHECK(read_checkpoint_info(step_dir(c, 12)).progress.step == 12);
    CHECK(read_checkpoint_info(step_dir(c, 16)).progress.step == 16);
    CHECK(read_text(step_dir(c, 12) + ".damaged/model-00000-of-00001.safetensors") == "partial");  // kept
    CHECK(fs::is_symlink(step_dir(c, 16) + ".damaged"));
}

TEST_CASE("a `latest` that cannot be written leaves a complete checkpoint, which resume finds", "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("integrity-latest");
    c.train.steps = 8;
    c.checkpoint.every = 4;
    // Where `latest` goes, a non-empty directory: renaming over it fails.
    fs::create_directories(checkpoints_dir(c.run.out_dir) + "/latest/in-the-way");
    const TrainSummary s = train(c, ops);  // no exception: the saves are complete
    CHECK(s.checkpoint == step_dir(c, 8));
    CHECK(latest_checkpoint(c.run.out_dir) == step_dir(c, 8));

    // And a `latest` that lags names an older one: the newest complete wins.
    fs::remove_all(checkpoints_dir(c.run.out_dir) + "/latest");
    write_text(checkpoints_dir(c.run.out_dir) + "/latest", "step-00000004\n");
    CHECK(latest_checkpoint(c.run.out_dir) == step_dir(c, 8));
}
