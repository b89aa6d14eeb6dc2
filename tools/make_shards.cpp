// moe-shards: text files -> token shards for training and validation. The
// files are concatenated as they are and cut into chunks; every K-th chunk
// goes to validation, so both splits sample the whole corpus. Each split's
// text is encoded with the tokenizer (bytes, vocab 256, by default; or a
// SentencePiece model), which is recorded beside the shards with the bytes
// and tokens of each split (DIR/tokenizer.txt: what bits per byte need). The
// unigram entropy of the train tokens (the loss of a model that ignores
// context) goes to DIR/stats.txt as the loss to beat.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/io/shard_record.h"
#include "engine/io/shards.h"
#include "engine/io/tokenizer.h"
#include "tools/tool_args.h"

namespace {

const char* kUsage =
    "usage: moe-shards --out DIR [--tokenizer bytes|M.model] [--val-every K] [--chunk BYTES] [--shard-tokens N]\n"
    "                  [--version 1|2|7] FILE...\n"
    "  Every K-th chunk of BYTES bytes of the text (defaults 20 and 2048) goes to DIR/val_*.bin, the rest\n"
    "  to DIR/train_*.bin, at most N tokens per shard (default 10000000).\n"
    "  --tokenizer: bytes (tokens 0..255, the default) or a SentencePiece model file (spm_train's .model);\n"
    "  it is recorded in DIR/tokenizer.txt with the bytes and tokens of each split.\n"
    "  --version: 1 (uint16 tokens), 2 or 7 (uint32 tokens; 7: llm.c's Llama 3 format); default 1 when\n"
    "  the vocabulary fits uint16, else 2.\n";

struct Args {
    std::string out, tokenizer = "bytes";
    long val_every = 20, chunk = 2048, shard_tokens = 10000000, version = 0;  // version 0: the narrowest
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
        } else if (arg == "--tokenizer") {
            a.tokenizer = args.value();
            if (a.tokenizer == "none") fail("--tokenizer none encodes no text: give bytes or a SentencePiece model");
        } else if (arg == "--val-every") {
            a.val_every = args.integer(1);
        } else if (arg == "--chunk") {
            a.chunk = args.integer(1);
        } else if (arg == "--shard-tokens") {
            a.shard_tokens = args.integer(1);
        } else if (arg == "--version") {
            a.version = args.integer(1);  // checked against the tokenizer's vocabulary
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

// Reads the files, concatenated.
std::string read_text(const std::vector<std::string>& files) {
    std::string text;
    for (const std::string& path : files) {
        const moe::ReadOnlyFile file(path);
        const size_t at = text.size();
        text.resize(at + file.size());
        file.read_at(0, &text[at], file.size());
    }
    return text;
}

// Chunks of the text, every val_every-th to validation. A chunk ends at the
// start of a UTF-8 character (at most 3 bytes early): a split never holds
// half of one, which a tokenizer would take for invalid text.
void split_text(const Args& a, const std::string& text, std::string& train, std::string& val) {
    const auto continuation = [&](size_t i) { return (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80; };
    size_t chunk = 0;
    for (size_t at = 0; at < text.size(); ++chunk) {
        size_t end = std::min(text.size(), at + size_t(a.chunk));
        for (int back = 0; back < 3 && end < text.size() && end > at + 1 && continuation(end); ++back) --end;
        (chunk % size_t(a.val_every) == size_t(a.val_every) - 1 ? val : train).append(text, at, end - at);
        at = end;
    }
    if (train.empty() || val.empty())
        fail("the input is too small to split: " + std::to_string(text.size()) + " bytes make fewer than " +
             std::to_string(a.val_every) + " chunks of " + std::to_string(a.chunk) + " bytes; lower --chunk");
}

// Writes the tokens as DIR/<split>_000000.bin, ... of at most --shard-tokens tokens.
int write_split(const Args& a, const std::string& split, const std::vector<int32_t>& ids, int version) {
    int shards = 0;
    for (size_t at = 0; at < ids.size(); at += size_t(a.shard_tokens), ++shards) {
        const size_t end = std::min(ids.size(), at + size_t(a.shard_tokens));
        const std::vector<uint32_t> tokens(ids.begin() + long(at), ids.begin() + long(end));
        char name[64];
        std::snprintf(name, sizeof name, "/%s_%06d.bin", split.c_str(), shards);
        moe::write_shard(a.out + name, tokens, version);
    }
    return shards;
}

// Entropy (nats) of the token frequencies.
double unigram_entropy(const std::vector<int32_t>& ids, int vocab) {
    std::vector<double> count(size_t(vocab), 0);
    for (int32_t id : ids) count[size_t(id)] += 1;
    double h = 0;
    for (double c : count)
        if (c > 0) h -= c / ids.size() * std::log(c / ids.size());
    return h;
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    try {
        const std::unique_ptr<moe::Tokenizer> tokenizer = moe::load_tokenizer(a.tokenizer);
        const int version = moe::shard_version_for(tokenizer->vocab_size(), int(a.version));
        const std::string text = read_text(a.files);
        std::string train, val;
        split_text(a, text, train, val);
        const std::vector<int32_t> train_ids = tokenizer->encode(train), val_ids = tokenizer->encode(val);
        // A model whose normalization changes the text (NFKC, spaces) counts the bytes of the original.
        if (tokenizer->decode(train_ids) != train || tokenizer->decode(val_ids) != val)
            std::printf("moe-shards: note: %s does not give the text back exactly (its normalization changes it); "
                        "bits per byte count the bytes of the original text\n",
                        tokenizer->identity().describe().c_str());

        std::error_code ec;
        std::filesystem::create_directories(a.out, ec);
        if (ec) fail("cannot create '" + a.out + "' (" + ec.message() + "): check the path and permissions");
        require_no_shards(a.out);
        const int train_shards = write_split(a, "train", train_ids, version);
        const int val_shards = write_split(a, "val", val_ids, version);
        moe::write_shard_record(a.out, {tokenizer->identity(),
                                        {int64_t(train.size()), int64_t(train_ids.size())},
                                        {int64_t(val.size()), int64_t(val_ids.size())}});
        const double h = unigram_entropy(train_ids, tokenizer->vocab_size());
        char stats[64];
        const int len = std::snprintf(stats, sizeof stats, "unigram_entropy_nats %.6f\n", h);
        moe::write_file_atomically(a.out + "/stats.txt", {{stats, size_t(len)}});

        std::printf("moe-shards: %zu files, %zu bytes -> %zu train tokens (%d shards), %zu val tokens (%d shards) "
                    "of version %d in %s\n",
                    a.files.size(), text.size(), train_ids.size(), train_shards, val_ids.size(), val_shards, version,
                    a.out.c_str());
        std::printf("moe-shards: tokenizer %s, %.4f bytes per token\n", tokenizer->identity().describe().c_str(),
                    double(text.size()) / double(train_ids.size() + val_ids.size()));
        std::printf("moe-shards: unigram entropy of the train tokens: %.4f nats (the loss to beat)\n", h);
    } catch (const std::exception& e) {
        fail(e.what());
    }
    return 0;
}
