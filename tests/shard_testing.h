// What the tests of shards share: the tokens of a shard, read back.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/io/shards.h"

namespace moe::test {

inline std::vector<uint32_t> read_shard_tokens(const std::string& path) {
    const ShardInfo info = read_shard_header(path);
    const ReadOnlyFile file(path);
    std::vector<uint32_t> tokens(size_t(info.num_tokens));
    for (int64_t i = 0; i < info.num_tokens; ++i) {
        if (info.token_bytes() == 2) {
            uint16_t t;
            file.read_at(uint64_t(kShardHeaderBytes + 2 * i), &t, 2);
            tokens[size_t(i)] = t;
        } else {
            file.read_at(uint64_t(kShardHeaderBytes + 4 * i), &tokens[size_t(i)], 4);
        }
    }
    return tokens;
}

}  // namespace moe::test
