// Tokenizers every build has (bytes, none), their identities as the records
// write them, text made a token at a time, the record moe-shards leaves
// beside its shards, and the shard version a vocabulary needs.
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/shard_record.h"
#include "engine/io/shards.h"
#include "engine/io/tokenizer.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::contains;
using moe::test::error_of;

namespace {

// Every piece TextStream hands out for ids, then what finish() adds.
std::vector<std::string> stream(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
    TextStream text(tokenizer);
    std::vector<std::string> pieces;
    for (int32_t id : ids) pieces.push_back(text.next(id));
    pieces.push_back(text.finish());
    return pieces;
}

}  // namespace

TEST_CASE("bytes: every byte is its own token, and any byte string comes back", "[unit]") {
    const auto bytes = load_tokenizer("bytes");
    CHECK(bytes->vocab_size() == 256);
    std::string all;
    for (int b = 0; b < 256; ++b) all += char(b);
    const std::vector<int32_t> ids = bytes->encode(all);
    REQUIRE(ids.size() == 256);
    for (int b = 0; b < 256; ++b) CHECK(ids[size_t(b)] == b);
    CHECK(bytes->decode(ids) == all);
    CHECK(bytes->encode("\xC3\xA9t\xC3\xA9") == std::vector<int32_t>{0xC3, 0xA9, 't', 0xC3, 0xA9});
    CHECK(contains(error_of<DataError>([&] { bytes->decode({65, 256}); }), "token 256 is not a byte"));
}

TEST_CASE("none: the text of ids is the ids in decimal, separated by spaces", "[unit]") {
    const auto ids = load_tokenizer("none");
    CHECK(ids->vocab_size() == 0);
    CHECK(ids->encode(" 12 0  128255 ") == std::vector<int32_t>{12, 0, 128255});
    CHECK(ids->encode("").empty());
    CHECK(ids->decode({12, 0, 128255}) == "12 0 128255");
    for (const std::string bad : {"1,2", "-3", "x", "99999999999", "1\n2"}) {
        INFO(bad);
        CHECK(error_of<DataError>([&] { ids->encode(bad); }) ==
              "tokenizer none reads token ids in decimal separated by spaces, got '" + bad + "'");
    }
}

TEST_CASE("identities: what they match, how they read, and their records", "[unit]") {
    const TokenizerIdentity bytes, none{"none", "", 0, 0};
    const TokenizerIdentity model{"sentencepiece", "a b.model", 0x00c0ffee, 1024};
    CHECK(bytes.describe() == "bytes (256 tokens)");
    CHECK(none.describe() == "none (ids made elsewhere)");
    CHECK(model.describe() == "sentencepiece 'a b.model' (crc32c 00c0ffee, 1024 tokens)");
    CHECK(load_tokenizer("bytes")->identity().same_as(bytes));
    CHECK(load_tokenizer("none")->identity().same_as(none));
    CHECK_FALSE(bytes.same_as(none));

    TokenizerIdentity renamed = model, other_bytes = model, other_vocab = model;
    renamed.file = "elsewhere.model";  // the same model moved: the same ids
    other_bytes.crc32c = 0x00c0ffef;
    other_vocab.vocab = 1025;
    CHECK(model.same_as(renamed));
    CHECK_FALSE(model.same_as(other_bytes));
    CHECK_FALSE(model.same_as(other_vocab));

    for (const TokenizerIdentity& id : {bytes, none, model}) {
        const TokenizerIdentity back = identity_from_yaml(identity_yaml(id));
        CHECK(back.same_as(id));
        CHECK(back.file == id.file);
    }
    CHECK(identity_yaml(model) == "{kind: sentencepiece, file: \"a b.model\", crc32c: 00c0ffee, vocab: 1024}");
    for (const std::string bad : {"{kind: bytes}", "{kind: bytes, file: \"\", crc32c: 00000000, vocab: 300}",
                                  "{kind: wordpiece, file: x, crc32c: 00000000, vocab: 3}",
                                  "{kind: sentencepiece, file: x, crc32c: 0x12, vocab: 3}", "[", "7"}) {
        INFO(bad);
        CHECK(contains(error_of<DataError>([&] { identity_from_yaml(bad); }), "tokenizer record '" + bad + "'"));
    }
}

TEST_CASE("text made a token at a time is the decoded text, piece by piece", "[unit]") {
    const auto bytes = load_tokenizer("bytes");
    // Bytes hand out each byte as it comes, half a character too: piped, the text stays byte for byte.
    CHECK(stream(*bytes, bytes->encode("a\xC3\xA9")) == std::vector<std::string>{"a", "\xC3", "\xA9", ""});
    const auto ids = load_tokenizer("none");
    CHECK(stream(*ids, {7, 0, 31}) == std::vector<std::string>{"7", " 0", " 31", ""});
}

TEST_CASE("the record beside the shards reads back, and a malformed one is refused with its file", "[unit]") {
    const std::string dir = moe::test::fresh_dir("tokenizer", "record");
    CHECK_FALSE(read_shard_record(dir).has_value());
    const ShardRecord written{{"sentencepiece", "m.model", 0xdeadbeef, 4096}, {2000, 700}, {100, 37}};
    write_shard_record(dir, written);
    const std::optional<ShardRecord> back = read_shard_record(dir);
    REQUIRE(back.has_value());
    CHECK(back->tokenizer.same_as(written.tokenizer));
    CHECK(back->tokenizer.file == "m.model");
    CHECK(back->train.bytes == 2000);
    CHECK(back->train.tokens == 700);
    CHECK(back->val.bytes == 100);
    CHECK(back->val.tokens == 37);
    const std::string path = dir + "/tokenizer.txt";
    for (const std::string bad : {"tokenizer: {kind: bytes, file: \"\", crc32c: 00000000, vocab: 256}\n",
                                  "tokenizer: {kind: bytes, file: \"\", crc32c: 00000000, vocab: 256}\n"
                                  "train: {bytes: 5, tokens: 5}\nval: {bytes: -1, tokens: 5}\n",
                                  "\x01\x02garbage: ["}) {
        INFO(bad);
        std::ofstream(path, std::ios::binary) << bad;
        const std::string msg = error_of<DataError>([&] { read_shard_record(dir); });
        CHECK(contains(msg, "'" + path + "' is malformed"));
        CHECK(contains(msg, "make the shards again with moe-shards"));
    }
}

TEST_CASE("a vocabulary takes the narrowest shards that hold it, or the version asked for if it fits", "[unit]") {
    CHECK(shard_version_for(256, 0) == 1);
    CHECK(shard_version_for(65536, 0) == 1);  // ids 0..65535 fit uint16
    CHECK(shard_version_for(65537, 0) == 2);
    CHECK(shard_version_for(128256, 7) == 7);
    CHECK(shard_version_for(256, 2) == 2);
    CHECK(contains(error_of<DataError>([] { shard_version_for(128256, 1); }),
                   "version 1 shards hold uint16 tokens, too narrow for a vocabulary of 128256 ids"));
    CHECK(contains(error_of<DataError>([] { shard_version_for(256, 3); }), "shard version 3 is unknown"));
}
