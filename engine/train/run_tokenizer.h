// The tokenizer of a run, checked before it trains: data.tokenizer loaded and
// held against model.vocab_size and against the records moe-shards left
// beside the shards of data.train and data.val (engine/io/shard_record.h);
// the validation text's bytes per token, for bits per byte; and the
// tokenizer of the weights a run starts from.
#pragma once
#include <optional>
#include <string>

#include "engine/config/config.h"
#include "engine/io/tokenizer.h"

namespace moe {

struct RunTokenizer {
    TokenizerIdentity identity;
    double val_bytes_per_token = 0;  // 0: unknown, no bits per byte
    std::string no_bits_per_byte;    // why, when unknown
};

// ConfigError, one line naming both sides, when the tokenizer's vocabulary is
// not model.vocab_size or the shards were made with another tokenizer, or
// naming the file when the model cannot be read; DataError for a malformed
// record. Call it once the data globs are known to match.
RunTokenizer check_run_tokenizer(const Config& cfg);

// CheckpointError, one line naming both, when weights (`what`: "checkpoint
// 'DIR'", a weights file) were trained with another tokenizer than the run's.
void require_same_tokenizer(const TokenizerIdentity& trained, const TokenizerIdentity& run, const std::string& what);

// The tokenizer a weights file records in its metadata (moe-checkpoint
// export writes it); none for files from elsewhere.
std::optional<TokenizerIdentity> weights_tokenizer(const std::string& path);

// Cross-entropy in nats per token as bits per byte of text.
double bits_per_byte(double loss_nats, double bytes_per_token);

}  // namespace moe
