#include "engine/train/run_tokenizer.h"

#include <cmath>
#include <filesystem>
#include <set>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/io/shard_record.h"
#include "engine/io/shards.h"

namespace moe {

namespace {

// The folders of the files a glob matches: where their records are.
std::set<std::string> folders_of(const std::string& glob) {
    std::set<std::string> folders;
    for (const std::string& path : expand_glob(glob)) {
        const std::string folder = std::filesystem::path(path).parent_path().string();
        folders.insert(folder.empty() ? "." : folder);
    }
    return folders;
}

// The records of a glob's folders, each held against the run's tokenizer.
// Adds their validation text to `val`; whether every folder has one.
bool check_records(const std::string& key, const std::string& glob, const TokenizerIdentity& run, SplitText& val) {
    bool all = true;
    for (const std::string& folder : folders_of(glob)) {
        const std::optional<ShardRecord> record = read_shard_record(folder);
        if (!record) {
            all = false;
            continue;
        }
        if (!record->tokenizer.same_as(run))
            throw ConfigError("config: data.tokenizer is " + run.describe() + " but the shards of " + key + " in '" +
                              folder + "' were made with " + record->tokenizer.describe() + " (their " +
                              kShardRecordFile + "): set data.tokenizer to the tokenizer of the shards, or make them "
                              "again with moe-shards --tokenizer");
        val.bytes += record->val.bytes;
        val.tokens += record->val.tokens;
    }
    return all;
}

}  // namespace

RunTokenizer check_run_tokenizer(const Config& cfg) {
    RunTokenizer run;
    try {
        run.identity = load_tokenizer(cfg.data.tokenizer)->identity();
    } catch (const DataError& e) {
        throw ConfigError(std::string("config: data.tokenizer: ") + e.what());
    }
    const TokenizerIdentity& id = run.identity;
    if (id.kind != "none" && id.vocab != cfg.model.vocab_size)
        throw ConfigError("config: data.tokenizer " + id.describe() + " has " + std::to_string(id.vocab) +
                          " tokens but model.vocab_size is " + std::to_string(cfg.model.vocab_size) +
                          ": set model.vocab_size to " + std::to_string(id.vocab) + ", or data.tokenizer to the "
                          "tokenizer of the shards");
    SplitText unused, val;
    check_records("data.train", cfg.data.train, id, unused);
    const bool val_recorded = !cfg.data.val.empty() && check_records("data.val", cfg.data.val, id, val);
    if (id.kind == "bytes") {
        run.val_bytes_per_token = 1;  // each token is one byte of the text
    } else if (id.kind == "none") {
        run.no_bits_per_byte = "data.tokenizer is none: the text behind the ids is unknown";
    } else if (val_recorded && val.tokens > 0) {
        run.val_bytes_per_token = double(val.bytes) / double(val.tokens);
    } else {
        run.no_bits_per_byte = std::string("the shards of data.val have no record of their text (") +
                               kShardRecordFile + ", written by moe-shards)";
    }
    return run;
}

void require_same_tokenizer(const TokenizerIdentity& trained, const TokenizerIdentity& run, const std::string& what) {
    if (!trained.same_as(run))
        throw CheckpointError(what + " was trained with tokenizer " + trained.describe() + " but data.tokenizer is " +
                              run.describe() + ": set data.tokenizer to the tokenizer it was trained with, or start "
                              "a new run without its weights");
}

std::optional<TokenizerIdentity> weights_tokenizer(const std::string& path) {
    const SafetensorsFile file(path);
    const auto at = file.metadata().find(kTokenizerMetadataKey);
    if (at == file.metadata().end()) return std::nullopt;
    try {
        return identity_from_yaml(at->second);
    } catch (const DataError& e) {
        throw DataError("'" + path + "': " + e.what());
    }
}

double bits_per_byte(double loss_nats, double bytes_per_token) { return loss_nats / (bytes_per_token * std::log(2.0)); }

}  // namespace moe
