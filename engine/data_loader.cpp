#include "engine/data_loader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>

#include "engine/rng.h"

namespace moe {

DataLoader::DataLoader(const std::string& glob, int vocab_size, int seq_len, int micro_batch, uint64_t seed,
                       bool shuffle, int rank, int world)
    : glob_(glob), vocab_(vocab_size), T_(seq_len), B_(micro_batch), rank_(rank), world_(world), seed_(seed),
      shuffle_(shuffle) {
    starts_.push_back(0);
    for (const std::string& path : expand_glob(glob)) {
        shards_.push_back(read_shard_header(path));
        const int64_t n = shards_.back().num_tokens;
        total_tokens_ += n;
        starts_.push_back(starts_.back() + (n > T_ ? (n - 1) / T_ : 0));
        const int fd = ::open(path.c_str(), O_RDONLY);
        if (fd < 0) throw DataError("shard '" + path + "': cannot open: " + std::strerror(errno));
        fds_.push_back(fd);
    }
    if (num_sequences() < int64_t(world_) * B_)
        throw DataError("data '" + glob + "' holds " + std::to_string(num_sequences()) + " sequences of " +
                        std::to_string(T_ + 1) + " tokens, fewer than the " + std::to_string(int64_t(world_) * B_) +
                        " one step needs: add data or lower train.seq_len / train.micro_batch_size");
    raw_.resize(size_t(T_ + 1) * 4);
    shuffle_epoch();
}

DataLoader::~DataLoader() {
    for (int fd : fds_) ::close(fd);
}

void DataLoader::shuffle_epoch() {
    order_.resize(num_sequences());
    std::iota(order_.begin(), order_.end(), 0);
    if (!shuffle_) return;
    // Fisher-Yates on our own generator: the same order on every platform.
    Rng rng(seed_, "data epoch " + std::to_string(pos_.epoch));
    for (int64_t i = int64_t(order_.size()) - 1; i > 0; --i)
        std::swap(order_[i], order_[int64_t(rng.next() % uint64_t(i + 1))]);
}

void DataLoader::set_position(const DataPosition& p) {
    const bool new_epoch = p.epoch != pos_.epoch;
    pos_ = p;
    if (new_epoch) shuffle_epoch();
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets) {
    const uint64_t step = uint64_t(world_) * B_;
    if (pos_.cursor + step > uint64_t(num_sequences())) {  // the rest of the epoch is too short
        ++pos_.epoch;
        pos_.cursor = 0;
        shuffle_epoch();
    }
    for (int b = 0; b < B_; ++b)
        read_sample(order_[pos_.cursor + uint64_t(rank_) * B_ + b], inputs + int64_t(b) * T_, targets + int64_t(b) * T_);
    pos_.cursor += step;
}

void DataLoader::read_sample(int64_t sample, int32_t* inputs, int32_t* targets) {
    const size_t s = std::upper_bound(starts_.begin(), starts_.end(), sample) - starts_.begin() - 1;
    const ShardInfo& shard = shards_[s];
    const int64_t first = (sample - starts_[s]) * T_;  // token offset in the shard
    const int width = shard.token_bytes();
    const size_t bytes = size_t(T_ + 1) * width;
    const ssize_t got = ::pread(fds_[s], raw_.data(), bytes, kShardHeaderBytes + first * width);
    if (got != ssize_t(bytes))
        throw DataError("shard '" + shard.path + "': cannot read tokens at offset " + std::to_string(first) +
                        ": the file changed or is unreadable");
    for (int i = 0; i <= T_; ++i) {
        uint32_t id;
        if (width == 2) {
            uint16_t v;
            std::memcpy(&v, raw_.data() + 2 * i, 2);
            id = v;
        } else {
            std::memcpy(&id, raw_.data() + 4 * i, 4);
        }
        if (id >= uint32_t(vocab_))
            throw DataError("shard '" + shard.path + "': token " + std::to_string(id) + " at token offset " +
                            std::to_string(first + i) + " is >= model.vocab_size " + std::to_string(vocab_) +
                            ": the data was made for another vocabulary");
        if (i < T_) inputs[i] = int32_t(id);
        if (i > 0) targets[i - 1] = int32_t(id);
    }
}

}  // namespace moe
