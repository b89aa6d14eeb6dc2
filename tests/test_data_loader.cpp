// The data loader: windows inside shards, deterministic shuffled order, epochs,
// resumable positions, the split over ranks, and token range checks.
#include <algorithm>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "engine/io/data_loader.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::contains;
namespace fs = std::filesystem;

namespace {

constexpr int kT = 8;

// Shards whose tokens count up across files (0, 1, 2, ...), so a window's first
// token names it. With T = 8: 6 + 0 + 4 + 1 = 11 samples in 50 + 5 + 33 + 10
// tokens; the 5-token shard is too short for a window. The shards are of
// versions 1, 2, 7 and 1.
struct Corpus {
    std::string glob;
    int vocab = 0;
    std::vector<int32_t> sample_starts;  // first token of each sample, natural order
};

Corpus make_corpus(const std::string& name) {
    const std::string dir = moe::test::fresh_dir("data_loader", name);
    const std::vector<int> sizes = {50, 5, 33, 10};
    Corpus c;
    uint32_t next = 0;
    for (size_t s = 0; s < sizes.size(); ++s) {
        std::vector<uint32_t> tokens(size_t(sizes[s]));
        std::iota(tokens.begin(), tokens.end(), next);
        for (int k = 0; (k + 1) * kT < sizes[s]; ++k) c.sample_starts.push_back(int32_t(next) + k * kT);
        next += uint32_t(sizes[s]);
        const int versions[] = {1, 2, 7};  // every token width, llm.c's Llama 3 shards too
        write_shard(dir + "/shard_" + std::to_string(s) + ".bin", tokens, versions[s % 3]);
    }
    c.glob = dir + "/shard_*.bin";
    c.vocab = int(next);
    return c;
}

struct Batch {
    std::vector<int32_t> inputs, targets;
};

Batch next(DataLoader& loader, int B) {
    Batch b{std::vector<int32_t>(size_t(B) * kT), std::vector<int32_t>(size_t(B) * kT)};
    loader.next_batch(b.inputs.data(), b.targets.data());
    return b;
}

// The first token of each row: which samples a batch holds.
std::vector<int32_t> samples_of(const Batch& b) {
    std::vector<int32_t> starts;
    for (size_t i = 0; i < b.inputs.size(); i += kT) starts.push_back(b.inputs[i]);
    return starts;
}

// The sample starts of `steps` batches, concatenated.
std::vector<int32_t> run(DataLoader& loader, int B, int steps) {
    std::vector<int32_t> all;
    for (int i = 0; i < steps; ++i) {
        const std::vector<int32_t> s = samples_of(next(loader, B));
        all.insert(all.end(), s.begin(), s.end());
    }
    return all;
}

}  // namespace

TEST_CASE("without shuffling, samples are the windows of each shard in file order", "[unit]") {
    const Corpus c = make_corpus("natural");
    DataLoader loader(c.glob, c.vocab, kT, 1, 42, /*shuffle=*/false);
    REQUIRE(loader.num_sequences() == 11);
    REQUIRE(loader.total_tokens() == 98);
    REQUIRE(c.sample_starts.size() == 11);
    for (int32_t start : c.sample_starts) {
        const Batch b = next(loader, 1);
        for (int t = 0; t < kT; ++t) {
            REQUIRE(b.inputs[size_t(t)] == start + t);       // tokens count up: the window is contiguous
            REQUIRE(b.targets[size_t(t)] == start + t + 1);  // and the targets are shifted by one
        }
    }
    REQUIRE(loader.position().epoch == 0);
    REQUIRE(loader.position().cursor == 11);
    REQUIRE(samples_of(next(loader, 1)) == std::vector<int32_t>{0});  // the next epoch starts over
    REQUIRE(loader.position().epoch == 1);
    REQUIRE(loader.position().cursor == 1);
}

TEST_CASE("an epoch skips a remainder too short for a step", "[unit]") {
    const Corpus c = make_corpus("wrap");
    DataLoader loader(c.glob, c.vocab, kT, 3, 42, /*shuffle=*/false);
    const std::vector<int32_t>& s = c.sample_starts;
    REQUIRE(run(loader, 3, 3) == std::vector<int32_t>(s.begin(), s.begin() + 9));
    REQUIRE(loader.position().cursor == 9);
    // 2 samples are left, fewer than 3: they are skipped and epoch 1 begins.
    REQUIRE(run(loader, 3, 1) == std::vector<int32_t>(s.begin(), s.begin() + 3));
    REQUIRE(loader.position().epoch == 1);
    REQUIRE(loader.position().cursor == 3);
}

TEST_CASE("shuffled order is a permutation fixed by the seed and the epoch", "[unit]") {
    const Corpus c = make_corpus("shuffle");
    DataLoader a(c.glob, c.vocab, kT, 1, 7, true), b(c.glob, c.vocab, kT, 1, 7, true);
    DataLoader other(c.glob, c.vocab, kT, 1, 8, true);
    const std::vector<int32_t> epoch0 = run(a, 1, 11), epoch1 = run(a, 1, 11);
    std::vector<int32_t> both = epoch0;
    both.insert(both.end(), epoch1.begin(), epoch1.end());
    REQUIRE(run(b, 1, 22) == both);
    REQUIRE(run(other, 1, 11) != epoch0);
    REQUIRE(epoch0 != epoch1);
    REQUIRE(epoch0 != c.sample_starts);
    for (std::vector<int32_t> epoch : {epoch0, epoch1}) {  // every sample exactly once per epoch
        std::sort(epoch.begin(), epoch.end());
        REQUIRE(epoch == c.sample_starts);
    }
}

TEST_CASE("a saved position resumes the exact sequence of batches", "[unit]") {
    const Corpus c = make_corpus("resume");
    const int B = 2;  // 5 steps per epoch of 11 samples
    DataLoader first(c.glob, c.vocab, kT, B, 3, true);
    run(first, B, 4);
    const DataPosition saved = first.position();
    std::vector<Batch> expected;
    for (int i = 0; i < 8; ++i) expected.push_back(next(first, B));  // through epoch 1 into epoch 2
    REQUIRE(first.position().epoch == 2);
    REQUIRE(first.position().cursor == 4);

    DataLoader resumed(c.glob, c.vocab, kT, B, 3, true);
    resumed.set_position(saved);
    for (const Batch& want : expected) {
        const Batch got = next(resumed, B);
        REQUIRE(got.inputs == want.inputs);
        REQUIRE(got.targets == want.targets);
    }
    REQUIRE(resumed.position().epoch == 2);
    REQUIRE(resumed.position().cursor == 4);

    // A fresh loader placed straight into a later epoch takes that epoch's order.
    DataLoader later(c.glob, c.vocab, kT, B, 3, true);
    later.set_position(first.position());
    REQUIRE(run(later, B, 3) == run(first, B, 3));
}

TEST_CASE("ranks split each step's samples: world 2 with B equals world 1 with 2B", "[unit]") {
    const Corpus c = make_corpus("ranks");
    const int B = 2;  // steps of 4 samples: 2 per epoch, 3 samples skipped
    for (bool shuffle : {false, true}) {
        DataLoader whole(c.glob, c.vocab, kT, 2 * B, 11, shuffle);
        DataLoader rank0(c.glob, c.vocab, kT, B, 11, shuffle, 0, 2), rank1(c.glob, c.vocab, kT, B, 11, shuffle, 1, 2);
        for (int step = 0; step < 7; ++step) {
            const Batch w = next(whole, 2 * B), r0 = next(rank0, B), r1 = next(rank1, B);
            const size_t half = size_t(B) * kT;
            REQUIRE(std::vector<int32_t>(w.inputs.begin(), w.inputs.begin() + half) == r0.inputs);
            REQUIRE(std::vector<int32_t>(w.inputs.begin() + half, w.inputs.end()) == r1.inputs);
            REQUIRE(std::vector<int32_t>(w.targets.begin(), w.targets.begin() + half) == r0.targets);
            REQUIRE(std::vector<int32_t>(w.targets.begin() + half, w.targets.end()) == r1.targets);
            REQUIRE(rank0.position().epoch == whole.position().epoch);
            REQUIRE(rank0.position().cursor == whole.position().cursor);
            REQUIRE(rank1.position().cursor == whole.position().cursor);
        }
        REQUIRE(whole.position().epoch == 3);
    }
}

TEST_CASE("a token outside the vocabulary names the shard and its offset", "[unit]") {
    const std::string dir = moe::test::fresh_dir("data_loader", "vocab");
    std::vector<uint32_t> tokens(40, 1);
    tokens[17] = 300;
    write_shard(dir + "/a.bin", tokens, 1);
    DataLoader loader(dir + "/*.bin", 256, kT, 1, 0, false);
    next(loader, 1);  // tokens 0..8
    next(loader, 1);  // tokens 8..16
    const std::string msg = moe::test::error_of<DataError>([&] { next(loader, 1); });
    REQUIRE(contains(msg, "shard '" + dir + "/a.bin'"));
    REQUIRE(contains(msg, "token 300 at token offset 17 is >= model.vocab_size 256"));
}

TEST_CASE("too little data for one step is refused with the sizes", "[unit]") {
    const std::string dir = moe::test::fresh_dir("data_loader", "too_small");
    write_shard(dir + "/a.bin", std::vector<uint32_t>(kT, 1), 1);  // T tokens: no window of T + 1
    std::string msg = moe::test::error_of<DataError>([&] { DataLoader(dir + "/*.bin", 256, kT, 1, 0, false); });
    REQUIRE(contains(msg, "data '" + dir + "/*.bin'"));
    REQUIRE(contains(msg, "8 tokens in 1 shard(s) make 0 sequences of 9 tokens"));

    write_shard(dir + "/b.bin", std::vector<uint32_t>(3 * kT + 1, 1), 2);  // 3 windows
    DataLoader fits(dir + "/*.bin", 256, kT, 3, 0, false);
    REQUIRE(fits.num_sequences() == 3);
    msg = moe::test::error_of<DataError>([&] { DataLoader(dir + "/*.bin", 256, kT, 2, 0, false, 0, 2); });
    REQUIRE(contains(msg, "fewer than the 4 (world 2 x micro_batch 2) one step needs"));

    REQUIRE(contains(moe::test::error_of<DataError>([&] { DataLoader(dir + "/none_*.bin", 256, kT, 1, 0, false); }), "no files match"));
    REQUIRE(contains(moe::test::error_of<DataError>([&] { DataLoader(dir + "/*.bin", 256, kT, 1, 0, false, 2, 2); }), "0 <= rank < world"));
}

TEST_CASE("a position past the data is refused", "[unit]") {
    const Corpus c = make_corpus("bad_position");
    DataLoader loader(c.glob, c.vocab, kT, 1, 0, true);
    loader.set_position({0, 11});  // the whole epoch consumed: valid
    REQUIRE(samples_of(next(loader, 1)).size() == 1);
    REQUIRE(loader.position().epoch == 1);
    const std::string msg = moe::test::error_of<DataError>([&] { loader.set_position({0, 12}); });
    REQUIRE(contains(msg, "cursor 12"));
    REQUIRE(contains(msg, "11 sequences"));
}
