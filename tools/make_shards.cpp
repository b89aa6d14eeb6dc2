// moe-shards: text files -> byte-level token shards (vocab 256) for training
// and validation. The files are concatenated as they are and cut into chunks;
// every K-th chunk goes to validation, so both splits sample the whole corpus.
// The unigram entropy of the train tokens (the loss of a model that ignores
// context) goes to DIR/stats.txt as the loss to beat.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "tools/tool_args.h"
#include "engine/io/shards.h"

namespace {

const char* kUsage =
    "usage: moe-shards --out DIR [--val-every K] [--chunk BYTES] [--shard-tokens N] [--version 1|2] FILE...\n"
    "  Byte-level tokens (0..255). Every K-th chunk of BYTES bytes (defaults 20 and 2048) goes to\n"
    "  DIR/val_*.bin, the rest to DIR/train_*.bin, at most N tokens per shard (default 10000000).\n";

struct Args {
    std::string out;
    long val_every = 20, chunk = 2048, shard_tokens = 10000000, version = 1;
    std::vector<std::string> files;
};

constexpr const char* kProgram = "moe-shards";

[[noreturn]] void fail(const std::string& msg) { moe::exit_with_error(kProgram, msg); }

Args parse(int argc, char** argv) {
    Args a;
    moe::ToolArgs args(kProgram, kUsage, argc, argv);
    while (args.next()) {
        const std::string& arg = args.arg();
        if (arg == "--out") {
            a.out = args.value();
        } else if (arg == "--val-every") {
            a.val_every = args.integer(1);
        } else if (arg == "--chunk") {
            a.chunk = args.integer(1);
        } else if (arg == "--shard-tokens") {
            a.shard_tokens = args.integer(1);
        } else if (arg == "--version") {
            a.version = args.integer(1);
            if (a.version != 1 && a.version != 2) fail("--version must be 1 (uint16 tokens) or 2 (uint32 tokens)");
        } else if (arg.rfind("--", 0) == 0) {
            args.fail_with_usage("unknown option '" + arg + "'");
        } else {
            a.files.push_back(arg);
        }
    }
    if (a.out.empty()) args.fail_with_usage("--out DIR is required");
    if (a.files.empty()) args.fail_with_usage("no input files");
    if (a.val_every < 2) fail("--val-every must be at least 2 (1 would leave no training data)");
    return a;
}

// Old shards beside new ones would be read too (data globs match them all).
void require_no_shards(const std::string& dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if ((name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0) && entry.path().extension() == ".bin")
            fail("'" + dir + "' already holds shards ('" + name + "'): remove them or choose another --out");
    }
}

// Writes the bytes as DIR/<split>_000000.bin, ... of at most --shard-tokens tokens.
int write_split(const Args& a, const std::string& split, const std::string& bytes) {
    int shards = 0;
    for (size_t at = 0; at < bytes.size(); at += size_t(a.shard_tokens), ++shards) {
        const size_t end = std::min(bytes.size(), at + size_t(a.shard_tokens));
        const std::vector<uint32_t> tokens(reinterpret_cast<const unsigned char*>(bytes.data()) + at,
                                           reinterpret_cast<const unsigned char*>(bytes.data()) + end);
        char name[64];
        std::snprintf(name, sizeof name, "/%s_%06d.bin", split.c_str(), shards);
        moe::write_shard(a.out + name, tokens, int(a.version));
    }
    return shards;
}

// Entropy (nats) of the byte frequencies.
double unigram_entropy(const std::string& bytes) {
    std::vector<double> count(256, 0);
    for (unsigned char b : bytes) count[b] += 1;
    double h = 0;
    for (double c : count)
        if (c > 0) h -= c / bytes.size() * std::log(c / bytes.size());
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    try {
        std::string text;
        for (const std::string& path : a.files) {
            const moe::ReadOnlyFile file(path);
            const size_t at = text.size();
            text.resize(at + file.size());
            file.read_at(0, &text[at], file.size());
        }
        std::string train, val;
        for (size_t at = 0, chunk = 0; at < text.size(); at += size_t(a.chunk), ++chunk) {
            std::string& split = chunk % size_t(a.val_every) == size_t(a.val_every) - 1 ? val : train;
            split.append(text, at, size_t(a.chunk));
        }
        if (train.empty() || val.empty())
            fail("the input is too small to split: " + std::to_string(text.size()) + " bytes make fewer than " +
                 std::to_string(a.val_every) + " chunks of " + std::to_string(a.chunk) + " bytes; lower --chunk");

        std::error_code ec;
        std::filesystem::create_directories(a.out, ec);
        if (ec) fail("cannot create '" + a.out + "' (" + ec.message() + "): check the path and permissions");
        require_no_shards(a.out);
        const int train_shards = write_split(a, "train", train), val_shards = write_split(a, "val", val);
        const double h = unigram_entropy(train);
        char stats[64];
        const int len = std::snprintf(stats, sizeof stats, "unigram_entropy_nats %.6f\n", h);
        moe::write_file_atomically(a.out + "/stats.txt", {{stats, size_t(len)}});

        std::printf(
            "moe-shards: %zu files, %zu bytes -> %zu train tokens (%d shards), %zu val tokens (%d shards) "
            "in %s\n",
            a.files.size(), text.size(), train.size(), train_shards, val.size(), val_shards, a.out.c_str());
        std::printf("moe-shards: unigram entropy of the train tokens: %.4f nats (the loss to beat)\n", h);
    } catch (const std::exception& e) {
        fail(e.what());
    }
    return 0;
}
