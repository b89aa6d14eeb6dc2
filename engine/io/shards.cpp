#include "engine/io/shards.h"

#include <glob.h>

#include <algorithm>
#include <climits>

namespace moe {

ShardInfo read_shard_header(const std::string& path) {
    const ReadOnlyFile file(path);
    const std::string where = "shard '" + path + "': ";
    if (file.size() < uint64_t(kShardHeaderBytes))
        throw DataError(where + std::to_string(file.size()) + " bytes, shorter than the " +
                        std::to_string(kShardHeaderBytes) + "-byte header: not a token shard (make shards with "
                        "moe-shards)");
    int32_t header[kShardHeaderInts];
    file.read_at(0, header, sizeof header);
    if (header[0] != kShardMagic && header[0] != kShardMagicLlama3)
        throw DataError(where + "magic " + std::to_string(header[0]) + " is neither " + std::to_string(kShardMagic) +
                        " nor llm.c's " + std::to_string(kShardMagicLlama3) +
                        ": not a token shard (make shards with moe-shards)");
    ShardInfo info{path, header[1], header[2]};
    if (header[0] == kShardMagicLlama3 && info.version != 7)
        throw DataError(where + "version " + std::to_string(info.version) + " is unknown for magic " +
                        std::to_string(kShardMagicLlama3) + " (llm.c's Llama 3 shards are version 7, uint32 tokens)"
                        ": make the shard again");
    if (header[0] == kShardMagic && info.version != 1 && info.version != 2)
        throw DataError(where + "version " + std::to_string(info.version) +
                        " is unknown (1: uint16 tokens, 2: uint32 tokens): make the shard again with moe-shards");
    if (info.num_tokens < 0)
        throw DataError(where + "negative token count " + std::to_string(info.num_tokens) +
                        " in its header: the file is corrupt, make it again");
    const uint64_t expected = uint64_t(kShardHeaderBytes) + uint64_t(info.num_tokens) * info.token_bytes();
    if (file.size() != expected)
        throw DataError(where + "the file is " + std::to_string(file.size()) + " bytes but its header declares " +
                        std::to_string(info.num_tokens) + " tokens of " + std::to_string(info.token_bytes()) +
                        " bytes (" + std::to_string(expected) + " bytes in all): the file is " +
                        (file.size() < expected ? "truncated" : "oversized") + ", make it again");
    return info;
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int version) {
    const std::string where = "shard '" + path + "': ";
    if (version != 1 && version != 2 && version != 7)
        throw DataError(where + "version must be 1 (uint16 tokens), 2 or 7 (uint32 tokens; 7 is llm.c's Llama 3 "
                        "format), got " + std::to_string(version));
    if (tokens.size() > size_t(INT32_MAX))
        throw DataError(where + std::to_string(tokens.size()) + " tokens do not fit one shard (at most 2^31 - 1): "
                        "split them over several shards");
    int32_t header[kShardHeaderInts] = {};
    header[0] = version == 7 ? kShardMagicLlama3 : kShardMagic;
    header[1] = version;
    header[2] = int32_t(tokens.size());
    if (version != 1) {
        write_file_atomically(path, {{header, sizeof header}, {tokens.data(), tokens.size() * 4}});
        return;
    }
    std::vector<uint16_t> narrow(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] > 65535)
            throw DataError(where + "token " + std::to_string(tokens[i]) + " at token offset " + std::to_string(i) +
                            " does not fit version 1 (uint16 tokens): write version 2 or 7");
        narrow[i] = uint16_t(tokens[i]);
    }
    write_file_atomically(path, {{header, sizeof header}, {narrow.data(), narrow.size() * 2}});
}

int shard_version_for(int64_t vocab, int requested) {
    constexpr int64_t kNarrow = 65536;  // ids of version 1's uint16 tokens
    if (requested == 0) return vocab <= kNarrow ? 1 : 2;
    if (requested != 1 && requested != 2 && requested != 7)
        throw DataError("shard version " + std::to_string(requested) +
                        " is unknown: 1 (uint16 tokens), 2 or 7 (uint32 tokens; 7 is llm.c's Llama 3 format)");
    if (requested == 1 && vocab > kNarrow)
        throw DataError("version 1 shards hold uint16 tokens, too narrow for a vocabulary of " + std::to_string(vocab) +
                        " ids: write version 2 or 7");
    return requested;
}

std::vector<std::string> expand_glob(const std::string& pattern) {
    glob_t g{};
    std::vector<std::string> files;
    if (::glob(pattern.c_str(), 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    if (files.empty())
        throw DataError("no files match '" + (pattern.size() > 200 ? pattern.substr(0, 200) + "..." : pattern) +
                        "' (data.train/val): run the data preparation (scripts/prepare_demo_data.sh or moe-shards, "
                        "see README)");
    std::sort(files.begin(), files.end());  // byte order, whatever the locale
    return files;
}

}  // namespace moe
