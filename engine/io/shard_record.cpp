#include "engine/io/shard_record.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "engine/io/files.h"

namespace moe {

namespace {

constexpr uint64_t kMaxRecordBytes = 64 << 10;

std::string split_yaml(const SplitText& s) {
    return "{bytes: " + std::to_string(s.bytes) + ", tokens: " + std::to_string(s.tokens) + "}";
}

SplitText split_from(const YAML::Node& node, const char* name) {
    const SplitText s{node[name]["bytes"].as<int64_t>(), node[name]["tokens"].as<int64_t>()};
    if (s.bytes < 0 || s.tokens < 0) throw DataError(std::string(name) + " has a negative count");
    return s;
}

}  // namespace

void write_shard_record(const std::string& dir, const ShardRecord& record) {
    const std::string text = "# moe-shards: the tokenizer of the shards in this folder, and the text of each split\n"
                             "tokenizer: " + identity_yaml(record.tokenizer) + "\n" +
                             "train: " + split_yaml(record.train) + "\n" +
                             "val: " + split_yaml(record.val) + "\n";
    write_file_atomically(dir + "/" + kShardRecordFile, {{text.data(), text.size()}});
}

std::optional<ShardRecord> read_shard_record(const std::string& dir) {
    const std::string path = dir + "/" + kShardRecordFile;
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) return std::nullopt;
    const std::string text = read_small_file(path, kMaxRecordBytes);
    ShardRecord record;
    try {
        const YAML::Node root = YAML::Load(text);
        record.tokenizer = identity_from_yaml(YAML::Dump(root["tokenizer"]));
        record.train = split_from(root, "train");
        record.val = split_from(root, "val");
    } catch (const std::exception& e) {
        throw DataError("'" + path + "' is malformed (" + e.what() + "): make the shards again with moe-shards");
    }
    return record;
}

}  // namespace moe
