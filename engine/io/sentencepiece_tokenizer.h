// The SentencePiece tokenizer behind load_tokenizer(): compiled with the
// library where the build found it (MOE_HAVE_SENTENCEPIECE), else a refusal
// that says how to get it.
#pragma once
#include <memory>
#include <string>

#include "engine/io/tokenizer.h"

namespace moe {

// The model file at path, read once: its bytes are both what is loaded and
// what the identity's CRC-32C is of. DataError naming the file otherwise.
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path);

}  // namespace moe
