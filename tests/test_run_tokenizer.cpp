// A run's tokenizer (every build: bytes and none; SentencePiece's own in
// test_sentencepiece): held against model.vocab_size and the shards' record,
// and bits per byte beside the validation loss in the metrics and summary.
#include <cmath>
#include <string>

#include "engine/io/metrics.h"
#include "engine/io/shard_record.h"
#include "engine/train/run_tokenizer.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;
using moe::test::contains;
using moe::test::error_of;

namespace {

// The evaluation lines of a run's metrics.
std::vector<MetricsLine> evaluations(const Config& c) {
    std::vector<MetricsLine> out;
    for (const MetricsLine& line : read_metrics(c.run.out_dir + "/metrics.jsonl"))
        if (line.size() > 1 && line[1].first == "val_loss") out.push_back(line);
    return out;
}

// The small run's shards as byte-level text (their ids, below 16, are bytes too).
Config byte_level(const std::string& name) {
    Config c = moe::test::small_config(name);
    c.model.vocab_size = 256;
    c.data.tokenizer = "bytes";
    return c;
}

}  // namespace

TEST_CASE("a byte-level run reports bits per byte: one byte a token, its loss in bits", "[unit]") {
    const Config c = byte_level("tokenizer-bytes-bpb");
    CpuOps ops;
    const TrainSummary s = train(c, ops);
    REQUIRE(evaluations(c).size() == 2);
    for (const MetricsLine& line : evaluations(c)) {
        REQUIRE(line.size() == 3);
        CHECK(line[2].first == "val_bpb");
        CHECK(line[2].second.number() == Approx(line[1].second.number() / std::log(2.0)).epsilon(1e-12));
    }
    CHECK(s.val_bpb == Approx(s.val_loss / std::log(2.0)).epsilon(1e-12));
    CHECK(s.tokenizer == "bytes (256 tokens)");
    CHECK(bits_per_byte(std::log(2.0) * 3, 1.5) == Approx(2.0));
}

TEST_CASE("ids made elsewhere have no bits per byte, and say why", "[unit]") {
    const Config c = moe::test::small_config("tokenizer-none");  // data.tokenizer none, vocab 16
    CpuOps ops;
    const TrainSummary s = train(c, ops);
    REQUIRE(evaluations(c).size() == 2);
    for (const MetricsLine& line : evaluations(c)) CHECK(line.size() == 2);  // step, val_loss
    CHECK(std::isnan(s.val_bpb));
    CHECK(s.tokenizer == "none (ids made elsewhere)");
    const RunTokenizer run = check_run_tokenizer(c);
    CHECK(run.val_bytes_per_token == 0);
    CHECK(run.no_bits_per_byte == "data.tokenizer is none: the text behind the ids is unknown");
}

TEST_CASE("a tokenizer whose vocabulary is not model.vocab_size is refused naming both", "[unit]") {
    Config c = moe::test::small_config("tokenizer-vocab");
    c.data.tokenizer = "bytes";  // 256 tokens, the model has 16
    CpuOps ops;
    CHECK(error_of<ConfigError>([&] { train(c, ops); }) ==
          "config: data.tokenizer bytes (256 tokens) has 256 tokens but model.vocab_size is 16: set "
          "model.vocab_size to 256, or data.tokenizer to the tokenizer of the shards");
}

TEST_CASE("shards recorded with another tokenizer are refused naming both, a malformed record naming it", "[unit]") {
    Config c = byte_level("tokenizer-record");
    const std::string data = c.run.out_dir.substr(0, c.run.out_dir.rfind("/run"));
    write_shard_record(data, {TokenizerIdentity{}, {6000, 6000}, {1200, 1200}});
    CHECK(check_run_tokenizer(c).val_bytes_per_token == 1);  // the record agrees

    c.data.tokenizer = "none";
    CpuOps ops;
    CHECK(error_of<ConfigError>([&] { train(c, ops); }) ==
          "config: data.tokenizer is none (ids made elsewhere) but the shards of data.train in '" + data +
              "' were made with bytes (256 tokens) (their tokenizer.txt): set data.tokenizer to the tokenizer of the "
              "shards, or make them again with moe-shards --tokenizer");
    write_file_atomically(data + "/tokenizer.txt", {{"tokenizer: [", 12}});
    CHECK(contains(error_of<DataError>([&] { train(c, ops); }), "'" + data + "/tokenizer.txt' is malformed"));
}

TEST_CASE("a tokenizer that cannot be loaded is refused as data.tokenizer's, naming the file", "[unit]") {
    Config c = byte_level("tokenizer-unreadable");
    c.data.tokenizer = c.run.out_dir + "/missing.model";
    CpuOps ops;
    const std::string msg = error_of<ConfigError>([&] { train(c, ops); });
    CHECK(msg.rfind("config: data.tokenizer: ", 0) == 0);
    CHECK(contains(msg, "'" + c.data.tokenizer + "'"));
}
