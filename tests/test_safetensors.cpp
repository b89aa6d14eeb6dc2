// Safetensors: round trips, files as Python's writers make them, and every
// kind of damaged file or mismatched request refused with a clear message.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/safetensors.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::contains;
namespace fs = std::filesystem;

namespace {

// A file with this exact header text and data.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
    std::ofstream f(path, std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header << data;
}

std::string file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// Two tensors, F32 [2, 3] then I32 [2]: 24 + 8 data bytes.
std::string write_pair(const std::string& path) {
    const float w[6] = {1, 2, 3, 4, 5, 6};
    const int32_t ids[2] = {7, -8};
    write_safetensors(path, {{"w", "F32", {2, 3}, w}, {"ids", "I32", {2}, ids}});
    return path;
}

}  // namespace

TEST_CASE("safetensors round trip: F32, I32, F64, empty tensors and metadata", "[unit]") {
    const std::string path = moe::test::fresh_dir("safetensors", "round_trip") + "/a.safetensors";
    const std::vector<float> w = {1.5f, -2.25f, 3e-8f, 4e20f, 0.f, -0.f};
    const std::vector<int32_t> ids = {7, -8, 2147483647, -2147483647 - 1};
    const double scalar = 3.141592653589793;
    const std::map<std::string, std::string> meta = {
        {"step", "12"},
        {"note", "quote \" backslash \\ newline \n tab \t bell \x07 del \x7f"},
        {"utf8", "\xc3\xa9t\xc3\xa9"},
        {"json-ish", "{\"a\": [1, 2]}: #x"},
        {"empty", ""}};
    write_safetensors(path,
                      {{"layers.0.w", "F32", {2, 3}, w.data()},
                       {"ids", "I32", {4}, ids.data()},
                       {"nothing", "U8", {0, 5}, nullptr},
                       {"pi", "F64", {}, &scalar}},
                      meta);
    REQUIRE_FALSE(fs::exists(path + ".tmp"));

    const SafetensorsFile f(path);
    REQUIRE(f.names() == std::vector<std::string>{"layers.0.w", "ids", "nothing", "pi"});
    REQUIRE(f.metadata() == meta);
    REQUIRE(f.has("ids"));
    REQUIRE_FALSE(f.has("w"));
    const SafetensorsFile::Info& info = f.info("ids");
    REQUIRE(info.dtype == "I32");
    REQUIRE(info.shape == std::vector<int64_t>{4});
    REQUIRE(info.begin == 24);
    REQUIRE(info.end == 40);
    REQUIRE(f.info("nothing").begin == f.info("nothing").end);

    std::vector<float> w2(6);
    f.read("layers.0.w", "F32", {2, 3}, w2.data());
    REQUIRE(std::memcmp(w2.data(), w.data(), 24) == 0);  // bit exact, -0 included
    std::vector<int32_t> ids2(4);
    f.read("ids", "I32", {4}, ids2.data());
    REQUIRE(ids2 == ids);
    double pi = 0;
    f.read("pi", "F64", {}, &pi);
    REQUIRE(pi == scalar);
    const std::vector<char> raw = f.read_raw("ids");
    REQUIRE(raw.size() == 16);
    REQUIRE(std::memcmp(raw.data(), ids.data(), 16) == 0);
    REQUIRE(f.read_raw("nothing").empty());
}

TEST_CASE("the layout: header padded with spaces to 8 bytes, data contiguous after it", "[unit]") {
    const std::string path = write_pair(moe::test::fresh_dir("safetensors", "layout") + "/a.safetensors");
    const std::string bytes = file_bytes(path);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    REQUIRE(n % 8 == 0);
    REQUIRE(bytes.size() == 8 + n + 24 + 8);
    const std::string header = bytes.substr(8, n);
    REQUIRE(header.front() == '{');
    const size_t json_end = header.find_last_not_of(' ') + 1;  // the JSON, then only spaces
    REQUIRE(header[json_end - 1] == '}');
    REQUIRE(n - json_end < 8);
    REQUIRE(contains(header, "\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]}"));
    REQUIRE(contains(header, "\"ids\": {\"dtype\": \"I32\", \"shape\": [2], \"data_offsets\": [24, 32]}"));
    float first = 0;
    std::memcpy(&first, bytes.data() + 8 + n, 4);
    REQUIRE(first == 1.0f);
}

TEST_CASE("files as Python writes them load: compact JSON, no padding, any key order", "[unit]") {
    const std::string path = moe::test::fresh_dir("safetensors", "python") + "/a.safetensors";
    const float b[2] = {0.5f, -1};
    const int64_t a = 42;
    std::string data(8, '\0');
    std::memcpy(&data[0], &a, 8);
    data.append(reinterpret_cast<const char*>(b), 8);
    write_raw(path,
              "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
              "\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
              "\"__metadata__\":{\"format\":\"pt\",\"name\":\"caf\\u00e9\"}}",
              data);
    const SafetensorsFile f(path);
    REQUIRE(f.names() == std::vector<std::string>{"a", "b"});  // data order
    REQUIRE(f.metadata().at("format") == "pt");
    REQUIRE(f.metadata().at("name") == "caf\xc3\xa9");
    int64_t a2 = 0;
    f.read("a", "I64", {1}, &a2);
    REQUIRE(a2 == 42);
    float b2[2];
    f.read("b", "F32", {2}, b2);
    REQUIRE(b2[1] == -1.0f);
}

TEST_CASE("reading checks dtype and shape exactly and names the tensor", "[unit]") {
    const std::string path = write_pair(moe::test::fresh_dir("safetensors", "mismatch") + "/a.safetensors");
    const SafetensorsFile f(path);
    std::vector<char> dst(64);
    std::string msg = moe::test::error_of<DataError>([&] { f.read("w", "I32", {2, 3}, dst.data()); });
    REQUIRE(contains(msg, path));
    REQUIRE(contains(msg, "tensor 'w' is F32 [2, 3], expected I32 [2, 3]"));
    msg = moe::test::error_of<DataError>([&] { f.read("w", "F32", {3, 2}, dst.data()); });
    REQUIRE(contains(msg, "tensor 'w' is F32 [2, 3], expected F32 [3, 2]"));
    msg = moe::test::error_of<DataError>([&] { f.read("w", "F32", {6}, dst.data()); });
    REQUIRE(contains(msg, "expected F32 [6]"));
    msg = moe::test::error_of<DataError>([&] { f.read("v", "F32", {2, 3}, dst.data()); });
    REQUIRE(contains(msg, "has no tensor 'v' (expected F32 [2, 3])"));
    REQUIRE(contains(moe::test::error_of<DataError>([&] { f.info("v"); }), "has no tensor 'v'"));
    REQUIRE(contains(moe::test::error_of<DataError>([&] { f.read_raw("v"); }), "has no tensor 'v'"));
}

TEST_CASE("damaged safetensors files are refused with the file named", "[unit]") {
    const std::string dir = moe::test::fresh_dir("safetensors", "damaged");
    const std::string path = dir + "/a.safetensors";
    const std::string good = "{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}";
    const std::string data(8, '\x01');
    const auto refusal = [&] { return moe::test::error_of<DataError>([&] { SafetensorsFile{path}; }); };

    SECTION("a valid file for reference") {
        write_raw(path, good, data);
        REQUIRE(SafetensorsFile(path).names() == std::vector<std::string>{"t"});
    }
    SECTION("shorter than the length field") {
        std::ofstream(path) << "abc";
        const std::string msg = refusal();
        REQUIRE(contains(msg, "'" + path + "' is not a valid safetensors file"));
        REQUIRE(contains(msg, "3 bytes"));
    }
    SECTION("header length past the end") {
        write_raw(path, good, data);
        std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
        const uint64_t huge = 1000000;
        f.write(reinterpret_cast<const char*>(&huge), 8);
        f.close();
        REQUIRE(contains(refusal(), "header length 1000000 (at byte offset 0) does not fit"));
    }
    SECTION("header not JSON") {
        write_raw(path, "{\"t\": {\"dtype\": [}", data);
        REQUIRE(contains(refusal(), "not valid JSON"));
        write_raw(path, "garbage", data);
        REQUIRE(contains(refusal(), "not a JSON object"));
    }
    SECTION("truncated data") {
        write_raw(path, good, data.substr(0, 6));
        const std::string msg = refusal();
        REQUIRE(contains(msg, "tensor 't'"));
        REQUIRE(contains(msg, "past the end"));
        REQUIRE(contains(msg, "truncated"));
    }
    SECTION("trailing bytes") {
        write_raw(path, good, data + "xyz");
        REQUIRE(contains(refusal(), "3 bytes after the last tensor"));
    }
    SECTION("offsets that disagree with the shape") {
        write_raw(path, "{\"t\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", data);
        REQUIRE(contains(refusal(), "hold 8 bytes, but F32 [3] needs 12"));
    }
    SECTION("a gap between tensors") {
        write_raw(path,
                  "{\"t\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                  " \"u\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [6, 8]}}",
                  data);
        REQUIRE(contains(refusal(), "tensor 'u' starts at data offset 6, expected 4"));
    }
    SECTION("a repeated name") {
        write_raw(path,
                  "{\"t\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                  " \"t\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
                  data);
        REQUIRE(contains(refusal(), "appears twice"));
    }
    SECTION("an unknown dtype") {
        write_raw(path, "{\"t\": {\"dtype\": \"F31\", \"shape\": [2], \"data_offsets\": [0, 8]}}", data);
        REQUIRE(contains(refusal(), "unknown dtype 'F31'"));
    }
    SECTION("a malformed entry") {
        write_raw(path, "{\"t\": {\"dtype\": \"F32\", \"shape\": [2]}}", data);
        REQUIRE(contains(refusal(), "needs \"dtype\", \"shape\" and two \"data_offsets\""));
        write_raw(path, "{\"t\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 8]}}", data);
        REQUIRE(contains(refusal(), "malformed entry 't'"));
        write_raw(path, "{\"t\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", data);
        REQUIRE(contains(refusal(), "negative dimension"));
    }
}

TEST_CASE("the writer refuses what it cannot write faithfully", "[unit]") {
    const std::string path = moe::test::fresh_dir("safetensors", "writer") + "/a.safetensors";
    const float x[2] = {1, 2};
    REQUIRE(contains(moe::test::error_of<DataError>([&] { write_safetensors(path, {{"x", "F33", {2}, x}}); }), "unknown dtype 'F33'"));
    REQUIRE(contains(moe::test::error_of<DataError>([&] {
                         write_safetensors(path, {{"x", "F32", {2}, x}, {"x", "F32", {1}, x}});
                     }),
                     "tensor 'x': the name appears twice"));
    REQUIRE(contains(moe::test::error_of<DataError>([&] { write_safetensors(path, {{"__metadata__", "F32", {2}, x}}); }), "reserved"));
    REQUIRE(contains(moe::test::error_of<DataError>([&] { write_safetensors(path, {{"x", "F32", {-1}, x}}); }), "negative dimension"));
    REQUIRE_FALSE(fs::exists(path));

    write_pair(path);  // and a rewrite replaces the file whole
    const float y = 9;
    write_safetensors(path, {{"y", "F32", {}, &y}});
    REQUIRE(SafetensorsFile(path).names() == std::vector<std::string>{"y"});
}
