#include "engine/shards.h"

#include <glob.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace moe {

ShardInfo read_shard_header(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw DataError("shard '" + path + "': cannot open: " + std::strerror(errno));
    int32_t header[256] = {};
    f.read(reinterpret_cast<char*>(header), sizeof header);
    if (f.gcount() != sizeof header)
        throw DataError("shard '" + path + "': shorter than its 1024-byte header: not a token shard");
    if (header[0] != kShardMagic)
        throw DataError("shard '" + path + "': magic " + std::to_string(header[0]) + " is not " +
                        std::to_string(kShardMagic) + ": not a token shard (make one with moe-shards)");
    ShardInfo info{path, header[1], header[2]};
    if (info.version != 1 && info.version != 2)
        throw DataError("shard '" + path + "': version " + std::to_string(info.version) +
                        " is unknown (1: uint16 tokens, 2: uint32 tokens)");
    if (info.num_tokens < 0) throw DataError("shard '" + path + "': negative token count in its header");
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(path, ec);
    const uint64_t expected = kShardHeaderBytes + uint64_t(info.num_tokens) * info.token_bytes();
    if (ec || size != expected)
        throw DataError("shard '" + path + "': " + std::to_string(size) + " bytes, but its header declares " +
                        std::to_string(info.num_tokens) + " tokens (" + std::to_string(expected) +
                        " bytes): the file is truncated or corrupt, make it again");
    return info;
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int version) {
    if (version != 1 && version != 2) throw DataError("shard version must be 1 or 2, got " + std::to_string(version));
    if (tokens.size() > size_t(INT32_MAX)) throw DataError("shard '" + path + "': more than 2^31 tokens");
    int32_t header[256] = {};
    header[0] = kShardMagic;
    header[1] = version;
    header[2] = int32_t(tokens.size());
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw DataError("cannot write '" + tmp + "': " + std::strerror(errno));
        f.write(reinterpret_cast<const char*>(header), sizeof header);
        if (version == 2) {
            f.write(reinterpret_cast<const char*>(tokens.data()), std::streamsize(tokens.size() * 4));
        } else {
            std::vector<uint16_t> narrow(tokens.size());
            for (size_t i = 0; i < tokens.size(); ++i) {
                if (tokens[i] > 65535)
                    throw DataError("shard '" + path + "': token " + std::to_string(tokens[i]) +
                                    " does not fit version 1 (uint16): use version 2");
                narrow[i] = uint16_t(tokens[i]);
            }
            f.write(reinterpret_cast<const char*>(narrow.data()), std::streamsize(narrow.size() * 2));
        }
        if (!f.flush()) throw DataError("cannot write '" + tmp + "': disk full?");
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) throw DataError("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

std::vector<std::string> expand_glob(const std::string& pattern) {
    glob_t g{};
    std::vector<std::string> files;
    if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
    globfree(&g);
    if (files.empty())
        throw DataError("no files match '" + pattern +
                        "' (data.train / data.val): prepare the data first (scripts/prepare_demo_data.sh, "
                        "or moe-shards; see README)");
    std::sort(files.begin(), files.end());
    return files;
}

}  // namespace moe
