// Token shards (llm.c's format): a header of 256 little-endian int32 (magic,
// version, token count), then the tokens. Magic 20240520 with version 1 holds
// uint16 tokens (llm.c's GPT-2 shards, moe-shards' default) and with version
// 2 uint32 tokens (moe-shards'); magic 20240801 with version 7 holds uint32
// tokens (llm.c's Llama 3 shards). Every failure is a DataError: one line
// naming the file and the fix.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/io/files.h"

namespace moe {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardMagicLlama3 = 20240801;  // llm.c's version 7 shards
constexpr int64_t kShardHeaderInts = 256;
constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;

struct ShardInfo {
    std::string path;
    int version = 0;
    int64_t num_tokens = 0;
    int token_bytes() const { return version == 1 ? 2 : 4; }
};

// Checks magic, version and that the file holds exactly the tokens it declares.
ShardInfo read_shard_header(const std::string& path);
// Writes path.tmp then renames it (version 1, 2 or 7; the magic follows the
// version); version 1 refuses tokens above 65535.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int version);
// The version of shards for the ids of a vocabulary: `requested` (1, 2 or 7)
// when its tokens hold every id, else a DataError; 0 asks for the narrowest
// (1 up to 65536 ids, else 2).
int shard_version_for(int64_t vocab, int requested);
// The files matching pattern, sorted; none is a DataError naming the pattern.
std::vector<std::string> expand_glob(const std::string& pattern);

}  // namespace moe
