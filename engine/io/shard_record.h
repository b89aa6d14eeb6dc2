// What moe-shards records beside the shards it writes, DIR/tokenizer.txt: the
// tokenizer that made them, and the text behind each split (its bytes and
// tokens: the bytes per token that bits per byte need). llm.c's shards, and
// those of moe-shards before tokenizers, have none.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "engine/io/tokenizer.h"

namespace moe {

struct SplitText {
    int64_t bytes = 0, tokens = 0;
};

struct ShardRecord {
    TokenizerIdentity tokenizer;
    SplitText train, val;
};

constexpr const char* kShardRecordFile = "tokenizer.txt";

void write_shard_record(const std::string& dir, const ShardRecord& record);
// DIR/tokenizer.txt, if there is one; DataError naming it when it is malformed.
std::optional<ShardRecord> read_shard_record(const std::string& dir);

}  // namespace moe
