// Token shards: header checks, round trips of every version (llm.c's version 7
// too), globbing, and the file primitives (checked positioned reads, atomic
// writes).
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/shards.h"
#include "tests/catch.h"
#include "tests/shard_testing.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::contains;
namespace fs = std::filesystem;

namespace {

void patch_int32(const std::string& path, int64_t offset, int32_t value) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(offset);
    f.write(reinterpret_cast<const char*>(&value), 4);
}

}  // namespace

TEST_CASE("shards round trip in every version", "[unit]") {
    const std::string dir = moe::test::fresh_dir("shards", "round_trip");
    for (int version : {1, 2, 7}) {
        const std::vector<uint32_t> tokens =
            version == 1 ? std::vector<uint32_t>{0, 1, 255, 65535, 7} : std::vector<uint32_t>{0, 65536, 4000000000u, 3};
        const std::string path = dir + "/v" + std::to_string(version) + ".bin";
        write_shard(path, tokens, version);
        const ShardInfo info = read_shard_header(path);
        REQUIRE(info.path == path);
        REQUIRE(info.version == version);
        REQUIRE(info.num_tokens == int64_t(tokens.size()));
        REQUIRE(fs::file_size(path) == uint64_t(1024 + tokens.size() * (version == 1 ? 2 : 4)));
        REQUIRE(moe::test::read_shard_tokens(path) == tokens);
        REQUIRE_FALSE(fs::exists(path + ".tmp"));
    }
}

TEST_CASE("the header is llm.c's: magic, version, count as int32", "[unit]") {
    const std::string path = moe::test::fresh_dir("shards", "layout") + "/a.bin";
    write_shard(path, {5, 6, 7}, 1);
    const ReadOnlyFile file(path);
    int32_t header[256];
    file.read_at(0, header, sizeof header);
    REQUIRE(header[0] == 20240520);
    REQUIRE(header[1] == 1);
    REQUIRE(header[2] == 3);
    for (int i = 3; i < 256; ++i) REQUIRE(header[i] == 0);
}

TEST_CASE("version 7 is llm.c's Llama 3 layout: magic 20240801, uint32 tokens", "[unit]") {
    const std::string path = moe::test::fresh_dir("shards", "v7_layout") + "/a.bin";
    write_shard(path, {128000, 9906, 1917}, 7);
    const ReadOnlyFile file(path);
    int32_t header[256];
    file.read_at(0, header, sizeof header);
    REQUIRE(header[0] == 20240801);
    REQUIRE(header[1] == 7);
    REQUIRE(header[2] == 3);
    uint32_t tokens[3];
    file.read_at(1024, tokens, sizeof tokens);
    REQUIRE(tokens[0] == 128000);
    REQUIRE(tokens[2] == 1917);
    REQUIRE(file.size() == 1024 + 12);
}

TEST_CASE("version 1 refuses tokens above 65535 and writes nothing", "[unit]") {
    const std::string path = moe::test::fresh_dir("shards", "v1_range") + "/a.bin";
    const std::string msg = moe::test::error_of<DataError>([&] { write_shard(path, {1, 2, 65536}, 1); });
    REQUIRE(contains(msg, path));
    REQUIRE(contains(msg, "token 65536 at token offset 2"));
    REQUIRE(contains(msg, "version 2"));
    REQUIRE_FALSE(fs::exists(path));
    REQUIRE_FALSE(fs::exists(path + ".tmp"));
    REQUIRE(contains(moe::test::error_of<DataError>([&] { write_shard(path, {1}, 3); }), "version must be 1"));
}

TEST_CASE("bad shard headers are refused with the file named", "[unit]") {
    const std::string dir = moe::test::fresh_dir("shards", "bad_headers");
    const std::string path = dir + "/a.bin";
    const std::vector<uint32_t> tokens(100, 9);

    SECTION("bad magic") {
        write_shard(path, tokens, 1);
        patch_int32(path, 0, 12345);
        const std::string msg = moe::test::error_of<DataError>([&] { read_shard_header(path); });
        REQUIRE(contains(msg, "shard '" + path + "'"));
        REQUIRE(contains(msg, "magic 12345 is neither 20240520 nor llm.c's 20240801"));
    }
    SECTION("llm.c's Llama 3 magic with another version") {
        write_shard(path, tokens, 7);
        patch_int32(path, 4, 2);
        const std::string msg = moe::test::error_of<DataError>([&] { read_shard_header(path); });
        REQUIRE(contains(msg, "shard '" + path + "'"));
        REQUIRE(contains(msg, "version 2 is unknown for magic 20240801"));
    }
    SECTION("version 7 under the GPT-2 magic") {
        write_shard(path, tokens, 7);
        patch_int32(path, 0, 20240520);
        const std::string msg = moe::test::error_of<DataError>([&] { read_shard_header(path); });
        REQUIRE(contains(msg, "shard '" + path + "'"));
        REQUIRE(contains(msg, "version 7 is unknown (1: uint16 tokens, 2: uint32 tokens)"));
    }
    SECTION("version 7 truncated") {
        write_shard(path, tokens, 7);
        fs::resize_file(path, 1024 + 398);
        const std::string msg = moe::test::error_of<DataError>([&] { read_shard_header(path); });
        REQUIRE(contains(msg, "shard '" + path + "'"));
        REQUIRE(contains(msg, "1422 bytes but its header declares 100 tokens of 4 bytes (1424 bytes in all)"));
        REQUIRE(contains(msg, "truncated"));
    }
    SECTION("bad version") {
        write_shard(path, tokens, 2);
        patch_int32(path, 4, 3);
        REQUIRE(contains(moe::test::error_of<DataError>([&] { read_shard_header(path); }), "version 3 is unknown"));
    }
    SECTION("truncated") {
        write_shard(path, tokens, 1);
        fs::resize_file(path, 1024 + 150);
        const std::string msg = moe::test::error_of<DataError>([&] { read_shard_header(path); });
        REQUIRE(contains(msg, path));
        REQUIRE(contains(msg, "1174 bytes"));  // found
        REQUIRE(contains(msg, "1224 bytes"));  // declared
        REQUIRE(contains(msg, "truncated"));
    }
    SECTION("oversized") {
        write_shard(path, tokens, 2);
        fs::resize_file(path, 1024 + 400 + 4);
        const std::string msg = moe::test::error_of<DataError>([&] { read_shard_header(path); });
        REQUIRE(contains(msg, "1428 bytes"));
        REQUIRE(contains(msg, "1424 bytes"));
        REQUIRE(contains(msg, "oversized"));
    }
    SECTION("shorter than the header") {
        std::ofstream(path) << "hello";
        REQUIRE(contains(moe::test::error_of<DataError>([&] { read_shard_header(path); }), "shorter than the 1024-byte header"));
    }
    SECTION("missing") {
        REQUIRE(contains(moe::test::error_of<DataError>([&] { read_shard_header(dir + "/none.bin"); }), "cannot open"));
    }
    SECTION("a directory") {
        REQUIRE(contains(moe::test::error_of<DataError>([&] { read_shard_header(dir); }), "not a regular file"));
    }
}

TEST_CASE("expand_glob sorts its matches and names the pattern when none match", "[unit]") {
    const std::string dir = moe::test::fresh_dir("shards", "glob");
    for (const char* name : {"train_000002.bin", "train_000000.bin", "val_000000.bin", "train_000001.bin"})
        write_shard(dir + "/" + name, {1}, 1);
    REQUIRE(expand_glob(dir + "/train_*.bin") ==
            std::vector<std::string>{dir + "/train_000000.bin", dir + "/train_000001.bin", dir + "/train_000002.bin"});
    const std::string msg = moe::test::error_of<DataError>([&] { expand_glob(dir + "/test_*.bin"); });
    REQUIRE(contains(msg, "no files match '" + dir + "/test_*.bin'"));
    REQUIRE(contains(msg, "data.train/val"));
    REQUIRE(contains(msg, "README"));
}

TEST_CASE("ReadOnlyFile reads exactly or names the offset", "[unit]") {
    const std::string path = moe::test::fresh_dir("shards", "read_at") + "/a.txt";
    std::ofstream(path) << "0123456789";
    const ReadOnlyFile file(path);
    REQUIRE(file.size() == 10);
    char buf[4] = {};
    file.read_at(6, buf, 4);
    REQUIRE(std::string(buf, 4) == "6789");
    const std::string msg = moe::test::error_of<DataError>([&] { file.read_at(8, buf, 4); });
    REQUIRE(contains(msg, path));
    REQUIRE(contains(msg, "byte offset 8"));
}

TEST_CASE("a FIFO, a device or a directory named as a shard is refused at once, not read", "[unit]") {
    const std::string dir = moe::test::fresh_dir("shards", "not-regular");
    const std::string fifo = dir + "/train_000000.bin";
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);  // opened for reading it would wait for a writer forever
    for (const std::string& path : {fifo, std::string("/dev/zero"), dir}) {
        INFO(path);
        const std::string message = moe::test::error_of<DataError>([&] { read_shard_header(path); });
        CHECK(message == "'" + path + "' is not a regular file: name a data file");
    }
    CHECK(moe::test::error_of<DataError>([&] { read_small_file(fifo, 100); }) ==
          "'" + fifo + "' is not a regular file: name a data file");
}

TEST_CASE("write_file_atomically replaces a file whole and leaves no temporary", "[unit]") {
    const std::string path = moe::test::fresh_dir("shards", "atomic") + "/a.txt";
    const std::string first = "first version", second = "second";
    write_file_atomically(path, {{first.data(), first.size()}});
    write_file_atomically(path, {{second.data(), 3}, {second.data() + 3, 3}});
    std::ifstream in(path);
    REQUIRE(std::string(std::istreambuf_iterator<char>(in), {}) == "second");
    REQUIRE_FALSE(fs::exists(path + ".tmp"));
    const std::string msg = moe::test::error_of<DataError>([&] { write_file_atomically(path + "/nodir/x", {}); });
    REQUIRE(contains(msg, "cannot create"));
}
