// SentencePiece tokenizers (builds with libsentencepiece; skipped otherwise):
// small models trained here on the README as scripts/train_tokenizer.sh
// trains one; text round trips and the model's identity; bad model files;
// moe-shards --tokenizer and its record; a run on such shards (bits per byte,
// its tokenizer in checkpoints and exports), moe-generate's text; and the
// refusal of a tokenizer that does not match the vocabulary, the shards, a
// checkpoint or exported weights, each naming both.
#include <sentencepiece_trainer.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/checkpoint.h"
#include "engine/io/crc32c.h"
#include "engine/io/metrics.h"
#include "engine/io/safetensors.h"
#include "engine/io/shard_record.h"
#include "engine/io/tokenizer.h"
#include "engine/train/run_tokenizer.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/shard_testing.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;
using moe::test::contains;
using moe::test::error_of;
using moe::test::ProgramResult;
using moe::test::run_program;
namespace fs = std::filesystem;

namespace {

constexpr int kVocab = 512;

std::string readme() { return read_small_file(std::string(MOE_SOURCE_DIR) + "/README.md", 1 << 24); }

// A model of kVocab tokens trained on the README, with the options of
// scripts/train_tokenizer.sh (the text comes back exactly; unknown
// characters are spelt in bytes). `type`: bpe or unigram.
std::string train_model(const std::string& dir, const std::string& name, const std::string& type) {
    const std::string input = dir + "/" + name + ".txt";
    std::ofstream(input, std::ios::binary) << readme();
    const sentencepiece::util::Status status = sentencepiece::SentencePieceTrainer::Train(
        {{"input", input}, {"model_prefix", dir + "/" + name}, {"model_type", type},
         {"vocab_size", std::to_string(kVocab)}, {"normalization_rule_name", "identity"},
         {"add_dummy_prefix", "false"}, {"remove_extra_whitespaces", "false"}, {"byte_fallback", "true"},
         {"character_coverage", "1.0"}, {"split_digits", "true"}, {"allow_whitespace_only_pieces", "true"},
         {"bos_id", "-1"}, {"eos_id", "-1"}, {"num_threads", "1"}, {"minloglevel", "2"}});
    INFO(status.ToString());
    REQUIRE(status.ok());
    return dir + "/" + name + ".model";
}

// moe-shards over the README into dir.
ProgramResult make_shards(const std::string& dir, const std::vector<std::string>& options) {
    std::vector<std::string> args = {"--out", dir};
    args.insert(args.end(), options.begin(), options.end());
    args.push_back(std::string(MOE_SOURCE_DIR) + "/README.md");
    return run_program(MOE_SHARDS_TOOL, args);
}

// Shards of the README made with `model` in dir/name, and a small run on them.
Config run_on(const std::string& dir, const std::string& name, const std::string& model) {
    const ProgramResult made = make_shards(dir + "/" + name, {"--tokenizer", model, "--val-every", "5", "--chunk", "512"});
    INFO(made.output);
    REQUIRE(made.exit_code == 0);
    Config c = moe::test::small_config_at(dir + "/" + name);
    c.model.vocab_size = kVocab;
    c.data.tokenizer = model;
    c.train.steps = 4;
    c.eval.every = 2;
    return c;
}

}  // namespace

TEST_CASE("a SentencePiece model encodes text and decodes it back exactly, and is known by its bytes", "[unit]") {
    REQUIRE(have_sentencepiece());
    const std::string dir = moe::test::fresh_dir("sentencepiece", "round_trip");
    const std::string model = train_model(dir, "bpe", "bpe");
    const auto tokenizer = load_tokenizer(model);
    const TokenizerIdentity& id = tokenizer->identity();
    CHECK(id.kind == "sentencepiece");
    CHECK(id.file == "bpe.model");
    CHECK(id.vocab == kVocab);
    const std::string bytes = read_small_file(model, 1 << 24);
    CHECK(id.crc32c == crc32c(0, bytes.data(), bytes.size()));

    const std::string text = readme();
    const std::vector<int32_t> ids = tokenizer->encode(text);
    CHECK(tokenizer->decode(ids) == text);
    CHECK(ids.size() * 3 < text.size() * 2);  // fewer tokens than bytes: merges were learnt
    for (int32_t i : ids) REQUIRE((i >= 0 && i < kVocab));
    for (const std::string other : {"na\xC3\xAFve caf\xC3\xA9 \xE2\x98\x83\n\n  two  spaces\tand a tab\r\n", "", "\n"})
        CHECK(tokenizer->decode(tokenizer->encode(other)) == other);
    CHECK(contains(error_of<DataError>([&] { tokenizer->decode({5, kVocab}); }),
                   "tokenizer " + id.describe() + ": token 512 is outside its vocabulary"));
}

TEST_CASE("a character spelt in byte tokens is handed out whole, once its last byte comes", "[unit]") {
    const std::string dir = moe::test::fresh_dir("sentencepiece", "stream");
    const auto tokenizer = load_tokenizer(train_model(dir, "bpe", "bpe"));
    const std::string snowman = "\xE2\x98\x83";  // U+2603, not in the README: three byte tokens
    REQUIRE(tokenizer->encode(snowman).size() == 3);
    const std::string text = "a " + snowman + " b";
    TextStream stream(*tokenizer);
    std::vector<std::string> pieces;
    for (int32_t id : tokenizer->encode(text)) pieces.push_back(stream.next(id));
    const std::string rest = stream.finish();
    CHECK(rest.empty());
    std::string whole;
    for (const std::string& p : pieces) whole += p;
    CHECK(whole == text);
    CHECK(std::count(pieces.begin(), pieces.end(), "") == 2);  // held back while the character was not whole
    CHECK(std::count_if(pieces.begin(), pieces.end(),
                        [&](const std::string& p) { return contains(p, snowman); }) == 1);
    CHECK_FALSE(contains(whole, "\xEF\xBF\xBD"));
}

TEST_CASE("bad SentencePiece model files are refused with the file named", "[unit]") {
    const std::string dir = moe::test::fresh_dir("sentencepiece", "bad_files");
    const auto refused = [](const std::string& path) { return error_of<DataError>([&] { load_tokenizer(path); }); };
    CHECK(refused(dir + "/missing.model") == "SentencePiece model '" + dir +
                                                 "/missing.model': cannot open (No such file or directory): check the "
                                                 "path and permissions");
    std::ofstream(dir + "/empty.model");
    std::ofstream(dir + "/garbage.model") << "\x08\x96\x01 not a model at all";
    for (const char* name : {"/empty.model", "/garbage.model"}) {
        const std::string msg = refused(dir + name);
        CHECK(contains(msg, "'" + dir + name + "' is not a SentencePiece model ("));
        CHECK(contains(msg, "give the .model file spm_train writes"));
    }
    REQUIRE(mkfifo((dir + "/fifo.model").c_str(), 0600) == 0);
    for (const std::string& path : {dir, dir + "/fifo.model"})
        CHECK(refused(path) == "SentencePiece model '" + path + "' is not a regular file: name a data file");

    // A model file that is not the one the weights were trained with.
    const std::string model = train_model(dir, "bpe", "bpe");
    const TokenizerIdentity trained = load_tokenizer(model)->identity();
    fs::copy_file(train_model(dir, "unigram", "unigram"), model, fs::copy_options::overwrite_existing);
    const std::string msg = error_of<DataError>([&] { load_recorded_tokenizer(trained, model); });
    CHECK(contains(msg, "the tokenizer model '" + model + "' is " + load_tokenizer(model)->identity().describe() +
                            ", not the " + trained.describe() + " the weights were trained with"));
}

TEST_CASE("moe-shards --tokenizer writes the model's ids and records the text of each split", "[unit]") {
    const std::string dir = moe::test::fresh_dir("sentencepiece", "moe_shards");
    const std::string model = train_model(dir, "bpe", "bpe");
    const auto tokenizer = load_tokenizer(model);
    const std::string text = readme();
    // Two chunks: the first trains, the second validates, so the splits are the README in two.
    const ProgramResult r =
        make_shards(dir + "/shards", {"--tokenizer", model, "--val-every", "2", "--chunk", std::to_string(text.size() / 2 + 1)});
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(contains(r.output, "tokenizer " + tokenizer->identity().describe() + ", "));
    CHECK(contains(r.output, " bytes per token"));
    const std::vector<uint32_t> train_ids = moe::test::read_shard_tokens(dir + "/shards/train_000000.bin");
    const std::vector<uint32_t> val_ids = moe::test::read_shard_tokens(dir + "/shards/val_000000.bin");
    CHECK(read_shard_header(dir + "/shards/train_000000.bin").version == 1);  // 512 ids fit uint16
    const std::string train = tokenizer->decode(std::vector<int32_t>(train_ids.begin(), train_ids.end()));
    const std::string val = tokenizer->decode(std::vector<int32_t>(val_ids.begin(), val_ids.end()));
    CHECK(train + val == text);
    CHECK(train.size() >= text.size() / 2 - 2);  // cut at a character's start, at most 3 bytes early

    const std::optional<ShardRecord> record = read_shard_record(dir + "/shards");
    REQUIRE(record.has_value());
    CHECK(record->tokenizer.same_as(tokenizer->identity()));
    CHECK(record->tokenizer.file == "bpe.model");
    CHECK(record->train.bytes == int64_t(train.size()));
    CHECK(record->train.tokens == int64_t(train_ids.size()));
    CHECK(record->val.bytes == int64_t(val.size()));
    CHECK(record->val.tokens == int64_t(val_ids.size()));
    CHECK(fs::exists(dir + "/shards/stats.txt"));

    REQUIRE(make_shards(dir + "/wide", {"--tokenizer", model, "--version", "2"}).exit_code == 0);
    CHECK(read_shard_header(dir + "/wide/train_000000.bin").version == 2);
    for (const auto& [args, why] : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"--tokenizer", dir + "/none.model"}, "SentencePiece model '" + dir + "/none.model': cannot open"},
             {{"--tokenizer", "none"}, "--tokenizer none encodes no text"},
             {{"--tokenizer", model, "--version", "5"}, "shard version 5 is unknown"}}) {
        const ProgramResult bad = make_shards(dir + "/bad", args);
        INFO(bad.output);
        CHECK(bad.exit_code != 0);
        CHECK(contains(bad.output, "moe-shards: " + why));
    }
}

TEST_CASE("a run on SentencePiece shards reports bits per byte, records its tokenizer and generates text", "[unit]") {
    const std::string dir = moe::test::fresh_dir("sentencepiece", "run");
    const std::string model = train_model(dir, "bpe", "bpe");
    const TokenizerIdentity id = load_tokenizer(model)->identity();
    const Config c = run_on(dir, "shards", model);
    CpuOps ops;
    const TrainSummary s = train(c, ops);

    const ShardRecord record = *read_shard_record(dir + "/shards");
    const double bytes_per_token = double(record.val.bytes) / double(record.val.tokens);
    CHECK(bytes_per_token > 1.3);
    int evaluations = 0;
    for (const MetricsLine& line : read_metrics(c.run.out_dir + "/metrics.jsonl")) {
        if (line[1].first != "val_loss") continue;
        ++evaluations;
        REQUIRE(line.size() == 3);
        CHECK(line[2].first == "val_bpb");
        CHECK(line[2].second.number() == Approx(line[1].second.number() / (bytes_per_token * std::log(2.0))).epsilon(1e-12));
    }
    CHECK(evaluations == 2);
    CHECK(s.val_bpb == Approx(s.val_loss / (bytes_per_token * std::log(2.0))).epsilon(1e-12));
    CHECK(s.tokenizer == id.describe());
    const CheckpointInfo info = read_checkpoint_info(latest_checkpoint(c.run.out_dir));
    CHECK(info.progress.tokenizer.same_as(id));
    CHECK(info.progress.tokenizer.file == "bpe.model");

    const std::string prompt = "The engine ";
    const ProgramResult text =
        run_program(MOE_GENERATE_TOOL, {c.run.out_dir, "--prompt", prompt, "--tokens", "12", "--temperature", "0"});
    INFO(text.output);
    REQUIRE(text.exit_code == 0);
    CHECK(text.output.rfind(prompt, 0) == 0);  // the prompt, encoded and decoded back
    CHECK(text.output.size() > prompt.size());

    const ProgramResult exported = run_program(MOE_CHECKPOINT_TOOL, {"export", c.run.out_dir, "--out", dir + "/export"});
    REQUIRE(exported.exit_code == 0);
    const SafetensorsFile weights(dir + "/export/model.safetensors");
    CHECK(identity_from_yaml(weights.metadata().at(kTokenizerMetadataKey)).same_as(id));

    fs::remove(dir + "/shards/tokenizer.txt");  // as llm.c's shards: nothing says what text they hold
    const RunTokenizer unrecorded = check_run_tokenizer(c);
    CHECK(unrecorded.identity.same_as(id));
    CHECK(unrecorded.val_bytes_per_token == 0);
    CHECK(unrecorded.no_bits_per_byte ==
          "the shards of data.val have no record of their text (tokenizer.txt, written by moe-shards)");
}

TEST_CASE("a tokenizer that does not fit the vocabulary, the shards or the weights is refused naming both", "[unit]") {
    const std::string dir = moe::test::fresh_dir("sentencepiece", "mismatch");
    const std::string a = train_model(dir, "a", "bpe"), b = train_model(dir, "b", "unigram");
    const TokenizerIdentity ida = load_tokenizer(a)->identity(), idb = load_tokenizer(b)->identity();
    REQUIRE(ida.vocab == idb.vocab);
    REQUIRE_FALSE(ida.same_as(idb));
    CpuOps ops;
    const Config on_a = run_on(dir, "shards-a", a);
    train(on_a, ops);

    Config refused = on_a;  // a fresh run: a start over checkpoints would be refused for that
    refused.run.out_dir = dir + "/refused";
    Config wrong_vocab = refused;
    wrong_vocab.model.vocab_size = 256;
    CHECK(contains(error_of<ConfigError>([&] { train(wrong_vocab, ops); }),
                   "config: data.tokenizer " + ida.describe() + " has 512 tokens but model.vocab_size is 256"));
    Config other_model = refused;
    other_model.data.tokenizer = b;
    CHECK(contains(error_of<ConfigError>([&] { train(other_model, ops); }),
                   "config: data.tokenizer is " + idb.describe() + " but the shards of data.train in '" + dir +
                       "/shards-a' were made with " + ida.describe() + " (their tokenizer.txt)"));
    REQUIRE(make_shards(dir + "/shards-bytes", {"--val-every", "5"}).exit_code == 0);
    Config byte_shards = refused;
    byte_shards.data.val = dir + "/shards-bytes/val_*.bin";
    CHECK(contains(error_of<ConfigError>([&] { train(byte_shards, ops); }),
                   "but the shards of data.val in '" + dir + "/shards-bytes' were made with bytes (256 tokens)"));

    // Weights of a, continued with b on b's shards: the checkpoint, and the exported weights.
    Config on_b = run_on(dir, "shards-b", b);
    on_b.run.out_dir = on_a.run.out_dir;
    on_b.train.steps = 6;
    TrainOptions resume;
    resume.resume = "auto";
    CHECK(contains(error_of<CheckpointError>([&] { train(on_b, ops, resume); }),
                   "checkpoint '" + latest_checkpoint(on_a.run.out_dir) + "' was trained with tokenizer " +
                       ida.describe() + " but data.tokenizer is " + idb.describe()));
    REQUIRE(run_program(MOE_CHECKPOINT_TOOL, {"export", on_a.run.out_dir, "--out", dir + "/export"}).exit_code == 0);
    on_b.run.out_dir = dir + "/run-from-a";
    TrainOptions init;
    init.init_from = dir + "/export/model.safetensors";
    CHECK(contains(error_of<CheckpointError>([&] { train(on_b, ops, init); }),
                   "'" + init.init_from + "' was trained with tokenizer " + ida.describe() + " but data.tokenizer is " +
                       idb.describe()));

    // moe-generate reads the model where the run found it: changed or gone, it refuses.
    fs::copy_file(b, a, fs::copy_options::overwrite_existing);
    const ProgramResult changed = run_program(MOE_GENERATE_TOOL, {on_a.run.out_dir, "--prompt", "x"});
    CHECK(changed.exit_code == 2);
    CHECK(contains(changed.output, "moe-generate: the tokenizer model '" + a + "' is sentencepiece 'a.model'"));
    CHECK(contains(changed.output, "not the " + ida.describe() + " the weights were trained with"));
    fs::remove(a);
    const ProgramResult gone = run_program(MOE_GENERATE_TOOL, {on_a.run.out_dir, "--prompt", "x"});
    CHECK(gone.exit_code == 2);
    CHECK(contains(gone.output, "moe-generate: SentencePiece model '" + a + "': cannot open"));
}
