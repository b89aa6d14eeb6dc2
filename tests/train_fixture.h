// A small model on synthetic shards for tests that train: data with a
// learnable pattern, a config that trains in milliseconds.
#pragma once
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/params/rng.h"
#include "engine/io/shards.h"
#include "tests/test_models.h"
#include "tests/test_util.h"

namespace moe::test {

// A directory of shards holding a repeating pattern with noise: learnable.
inline std::string make_data(const std::string& name) {
    const std::string dir = fresh_dir("trainer", name);
    Rng rng(5);
    std::vector<uint32_t> tokens(6000);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = rng.uniform() < 0.1 ? rng.next() % 16 : (i * 7) % 13;
    write_shard(dir + "/train_000000.bin", tokens, 1);
    tokens.resize(1200);
    write_shard(dir + "/val_000000.bin", tokens, 2);
    return dir;
}

// The config over data made by make_data (for ranks that share one directory).
inline Config small_config_at(const std::string& data) {
    Config c;
    c.data.train = data + "/train_*.bin";
    c.data.val = data + "/val_*.bin";
    c.data.tokenizer = "none";  // ids of a pattern, not text
    c.model = test_model({16, 32, 2, 4, 2, 3, 48, 16});
    c.train.seq_len = 16;
    c.train.micro_batch_size = 4;
    c.train.steps = 6;
    c.optimizer.warmup_steps = 2;
    c.eval.every = 3;
    c.eval.batches = 2;
    c.log.every = 100;
    c.run.out_dir = data + "/run";
    return c;
}

inline Config small_config(const std::string& name) { return small_config_at(make_data(name)); }

}  // namespace moe::test
