#include "engine/io/data_loader.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "engine/io/crc32c.h"
#include "engine/params/rng.h"

namespace moe {

namespace {

// Uniform in [0, n) from 64-bit draws, the same on every standard library:
// draws below 2^64 mod n are rejected so that every value is equally likely.
uint64_t uniform_below(Rng& rng, uint64_t n) {
    const uint64_t reject_below = (0 - n) % n;
    uint64_t r = rng.next();
    while (r < reject_below) r = rng.next();
    return r % n;
}

// Windows of seq_len + 1 tokens at stride seq_len that fit in n tokens.
int64_t samples_in(int64_t n, int seq_len) { return n > seq_len ? (n - 1) / seq_len : 0; }

}  // namespace

DataLoader::DataLoader(const std::string& glob, int vocab_size, int seq_len, int micro_batch, uint64_t seed,
                       bool shuffle, int rank, int world)
    : glob_(glob), vocab_(vocab_size), T_(seq_len), B_(micro_batch), rank_(rank), world_(world), seed_(seed),
      shuffle_(shuffle) {
    if (vocab_ <= 0 || T_ <= 0 || B_ <= 0 || world_ <= 0 || rank_ < 0 || rank_ >= world_)
        throw DataError("data '" + glob + "': vocab_size " + std::to_string(vocab_) + ", seq_len " +
                        std::to_string(T_) + ", micro_batch " + std::to_string(B_) + ", rank " +
                        std::to_string(rank_) + " of " + std::to_string(world_) +
                        ": sizes must be positive and 0 <= rank < world");
    first_sample_.push_back(0);
    for (const std::string& path : expand_glob(glob)) {
        shards_.push_back(read_shard_header(path));
        files_.emplace_back(path);
        total_tokens_ += shards_.back().num_tokens;
        first_sample_.push_back(first_sample_.back() + samples_in(shards_.back().num_tokens, T_));
    }
    const int64_t per_step = int64_t(world_) * B_;
    if (num_sequences() < per_step)
        throw DataError("data '" + glob + "': " + std::to_string(total_tokens_) + " tokens in " +
                        std::to_string(shards_.size()) + " shard(s) make " + std::to_string(num_sequences()) +
                        " sequences of " + std::to_string(T_ + 1) + " tokens, fewer than the " +
                        std::to_string(per_step) + " (world " + std::to_string(world_) + " x micro_batch " +
                        std::to_string(B_) + ") one step needs: add data or lower train.seq_len / "
                        "train.micro_batch_size");
    raw_.resize(size_t(T_ + 1) * 4);
    order_epoch();
}

DataIdentity DataLoader::identity() const {
    std::string lines;
    for (const ShardInfo& shard : shards_)
        lines += std::filesystem::path(shard.path).filename().string() + " " + std::to_string(shard.num_tokens) + "\n";
    return {int64_t(shards_.size()), total_tokens_, crc32c(0, lines.data(), lines.size())};
}

void DataLoader::order_epoch() {
    if (!shuffle_) return;
    order_.resize(size_t(num_sequences()));
    std::iota(order_.begin(), order_.end(), 0);
    // Fisher-Yates on mt19937_64 with our own bounded draws: the same order everywhere.
    Rng rng(seed_, "data epoch " + std::to_string(pos_.epoch));
    for (uint64_t i = order_.size() - 1; i > 0; --i) std::swap(order_[i], order_[uniform_below(rng, i + 1)]);
}

void DataLoader::set_position(const DataPosition& p) {
    if (p.cursor > uint64_t(num_sequences()))
        throw DataError("data '" + glob_ + "': position (epoch " + std::to_string(p.epoch) + ", cursor " +
                        std::to_string(p.cursor) + ") lies past its " + std::to_string(num_sequences()) +
                        " sequences: the data or train.seq_len changed since the checkpoint; resume with the same "
                        "data and seq_len");
    const bool new_epoch = p.epoch != pos_.epoch;
    pos_ = p;
    if (new_epoch) order_epoch();
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
    const uint64_t per_step = uint64_t(world_) * B_;
    if (pos_.cursor + per_step > uint64_t(num_sequences())) {  // the rest of the epoch is too short: skip it
        ++pos_.epoch;
        pos_.cursor = 0;
        order_epoch();
    }
    for (int b = 0; b < B_; ++b) {
        const uint64_t i = pos_.cursor + uint64_t(rank_) * B_ + b;
        read_sample(shuffle_ ? order_[i] : int64_t(i), inputs + int64_t(b) * T_, targets + int64_t(b) * T_);
    }
    pos_.cursor += per_step;
}

void DataLoader::read_sample(int64_t sample, int32_t* inputs, int32_t* targets) {
    const size_t s = size_t(std::upper_bound(first_sample_.begin(), first_sample_.end(), sample) -
                            first_sample_.begin() - 1);
    const ShardInfo& shard = shards_[s];
    const int64_t first = (sample - first_sample_[s]) * T_;  // token offset in the shard
    const int width = shard.token_bytes();
    files_[s].read_at(uint64_t(kShardHeaderBytes + first * width), raw_.data(), size_t(T_ + 1) * width);
    for (int i = 0; i <= T_; ++i) {
        uint32_t id;
        if (width == 2) {
            uint16_t narrow;
            std::memcpy(&narrow, raw_.data() + 2 * i, 2);
            id = narrow;
        } else {
            std::memcpy(&id, raw_.data() + 4 * i, 4);
        }
        if (id >= uint32_t(vocab_))
            throw DataError("shard '" + shard.path + "': token " + std::to_string(id) + " at token offset " +
                            std::to_string(first + i) + " is >= model.vocab_size " + std::to_string(vocab_) +
                            ": make the shards with this vocabulary or raise model.vocab_size");
        if (i < T_) inputs[i] = int32_t(id);
        if (i > 0) targets[i - 1] = int32_t(id);
    }
}

}  // namespace moe
