// Token shards (llm.c's format): a header of 256 little-endian int32 (magic
// 20240520, version 1 for uint16 tokens or 2 for uint32, token count), then the
// tokens. Every failure is a DataError: one line naming the file and the fix.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/io/files.h"

namespace moe {

constexpr int32_t kShardMagic = 20240520;
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
// Writes path.tmp then renames it; version 1 refuses tokens above 65535.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int version);
// The files matching pattern, sorted; none is a DataError naming the pattern.
std::vector<std::string> expand_glob(const std::string& pattern);

}  // namespace moe
