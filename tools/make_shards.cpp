// moe-shards: text files -> byte-level token shards (vocab 256) for training
// and validation. Every K-th chunk of the text goes to validation, so both
// splits sample the whole corpus.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "engine/shards.h"

namespace {

const char* kUsage =
    "usage: moe-shards --out DIR [--val-every K] [--chunk BYTES] [--shard-tokens N] [--version 1|2] FILE...\n"
    "  Byte-level tokens (0..255). Every K-th chunk of BYTES bytes (default 20, 2048) goes to\n"
    "  DIR/val_*.bin, the rest to DIR/train_*.bin, N tokens per shard (default 10000000).\n";

struct Args {
    std::string out;
    long val_every = 20, chunk = 2048, shard_tokens = 10000000, version = 1;
    std::vector<std::string> files;
};

[[noreturn]] void fail(const std::string& msg) {
    std::fprintf(stderr, "moe-shards: %s\n", msg.c_str());
    std::exit(2);
}

long positive(const std::string& flag, const char* text) {
    char* end = nullptr;
    const long v = std::strtol(text, &end, 10);
    if (!*text || *end || v <= 0) fail(flag + " takes a positive integer, got '" + text + "'");
    return v;
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) fail(arg + " needs a value\n" + kUsage);
            return argv[++i];
        };
        if (arg == "--help" || arg == "-h") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        } else if (arg == "--out") {
            a.out = value();
        } else if (arg == "--val-every") {
            a.val_every = positive(arg, value());
        } else if (arg == "--chunk") {
            a.chunk = positive(arg, value());
        } else if (arg == "--shard-tokens") {
            a.shard_tokens = positive(arg, value());
        } else if (arg == "--version") {
            a.version = positive(arg, value());
            if (a.version != 1 && a.version != 2) fail("--version must be 1 or 2");
        } else if (arg.rfind("--", 0) == 0) {
            fail("unknown option '" + arg + "'\n" + kUsage);
        } else {
            a.files.push_back(arg);
        }
    }
    if (a.out.empty()) fail(std::string("--out DIR is required\n") + kUsage);
    if (a.files.empty()) fail(std::string("no input files\n") + kUsage);
    if (a.val_every < 2) fail("--val-every must be at least 2 (1 would leave no training data)");
    return a;
}

// Writes tokens as DIR/prefix_000000.bin, ... of at most per_shard tokens.
int write_split(const Args& a, const std::string& prefix, const std::vector<uint32_t>& tokens) {
    int shards = 0;
    for (size_t at = 0; at < tokens.size(); at += size_t(a.shard_tokens), ++shards) {
        const size_t end = std::min(tokens.size(), at + size_t(a.shard_tokens));
        char name[64];
        std::snprintf(name, sizeof name, "/%s_%06d.bin", prefix.c_str(), shards);
        moe::write_shard(a.out + name, std::vector<uint32_t>(tokens.begin() + at, tokens.begin() + end),
                         int(a.version));
    }
    return shards;
}

double unigram_entropy(const std::vector<uint32_t>& tokens) {
    std::vector<double> count(256, 0);
    for (uint32_t t : tokens) count[t] += 1;
    double h = 0;
    for (double c : count)
        if (c > 0) h -= c / tokens.size() * std::log(c / tokens.size());
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    std::string text;
    for (const std::string& f : a.files) {
        std::ifstream in(f, std::ios::binary);
        if (!in) fail("cannot read '" + f + "'");
        text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    std::vector<uint32_t> train, val;
    for (size_t at = 0, chunk = 0; at < text.size(); at += size_t(a.chunk), ++chunk) {
        auto& split = (chunk % size_t(a.val_every) == size_t(a.val_every) - 1) ? val : train;
        const size_t end = std::min(text.size(), at + size_t(a.chunk));
        for (size_t i = at; i < end; ++i) split.push_back(uint8_t(text[i]));
    }
    if (train.empty() || val.empty())
        fail("the input is too small to split: " + std::to_string(text.size()) + " bytes; lower --chunk");
    try {
        std::filesystem::create_directories(a.out);
        const int train_shards = write_split(a, "train", train), val_shards = write_split(a, "val", val);
        const double h = unigram_entropy(train);
        std::ofstream stats(a.out + "/stats.txt");
        stats << "unigram_entropy_nats " << h << "\n";
        if (!stats) fail("cannot write '" + a.out + "/stats.txt'");
        std::printf("moe-shards: %zu files, %zu bytes -> %zu train tokens (%d shards), %zu val tokens (%d shards) in %s\n",
                    a.files.size(), text.size(), train.size(), train_shards, val.size(), val_shards, a.out.c_str());
        std::printf("moe-shards: unigram entropy of the train tokens: %.4f nats\n", h);
    } catch (const std::exception& e) {
        fail(e.what());
    }
    return 0;
}
