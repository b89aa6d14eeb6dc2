// Batches of token sequences from shards. Samples are windows of seq_len + 1
// tokens at stride seq_len inside each shard (never across two shards); each
// epoch visits them in an order fixed by (seed, epoch), or in file order
// without shuffling. A step takes world * micro_batch samples of that order and
// rank r reads its own micro_batch of them, so the data a step sees does not
// depend on how it is split over ranks. Tokens are read from disk as needed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/io/shards.h"

namespace moe {

struct DataPosition {
    uint64_t epoch = 0;
    uint64_t cursor = 0;  // samples of this epoch's order already consumed (by all ranks)
};

// What a position counts in: the shards a loader reads, by file name (not
// folder: the data may move) and token count, in order. For the same seed and
// seq_len, loaders of equal identity visit the same sequences in the same order.
struct DataIdentity {
    int64_t shards = 0, tokens = 0;
    uint32_t crc32c = 0;  // of the "name tokens" lines
    bool operator==(const DataIdentity& o) const {
        return shards == o.shards && tokens == o.tokens && crc32c == o.crc32c;
    }
    bool operator!=(const DataIdentity& o) const { return !(*this == o); }
};

class DataLoader {
public:
    DataLoader(const std::string& glob, int vocab_size, int seq_len, int micro_batch, uint64_t seed, bool shuffle,
               int rank = 0, int world = 1);

    // inputs and targets [B, T] row-major; targets are inputs shifted by one.
    void next_batch(int32_t* inputs, int32_t* targets);

    DataPosition position() const { return pos_; }
    // Resumes at p (a position() of a loader on the same data and seed).
    void set_position(const DataPosition& p);
    int64_t num_sequences() const { return first_sample_.back(); }
    int64_t total_tokens() const { return total_tokens_; }
    DataIdentity identity() const;

private:
    void order_epoch();
    void read_sample(int64_t sample, int32_t* inputs, int32_t* targets);

    std::string glob_;
    int vocab_, T_, B_, rank_, world_;
    uint64_t seed_;
    bool shuffle_;
    std::vector<ShardInfo> shards_;
    std::vector<ReadOnlyFile> files_;
    std::vector<int64_t> first_sample_;  // [shards + 1]: the first sample of each shard, then the total
    int64_t total_tokens_ = 0;
    std::vector<int64_t> order_;  // this epoch's sample order when shuffling (natural order otherwise)
    std::vector<char> raw_;       // one sample's bytes as stored
    DataPosition pos_;
};

}  // namespace moe
