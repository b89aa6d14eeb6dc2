// Tokenizers: text <-> token ids, and what identifies one. The identity is
// recorded beside the shards moe-shards writes, in checkpoints and in
// exported weights, so that a run, its data and its weights agree on what the
// ids mean. Three kinds:
//   bytes          each byte of the text is a token (vocab 256): the default
//   sentencepiece  a SentencePiece model file (BPE or unigram), in builds
//                  with SentencePiece (libsentencepiece-dev)
//   none           ids made by a tokenizer the engine cannot run (llm.c's
//                  GPT-2 and Llama 3 shards): any vocabulary, and the text of
//                  ids is the ids in decimal, separated by spaces
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/io/files.h"  // DataError

namespace moe {

struct TokenizerIdentity {
    std::string kind = "bytes";  // bytes | sentencepiece | none
    std::string file;            // sentencepiece: the model's file name, without its folder
    uint32_t crc32c = 0;         // sentencepiece: CRC-32C of the model file
    int vocab = 256;             // 0 for none: any

    // Whether the two give the same ids for the same text: the kind and, for
    // a model, its bytes and vocabulary (a model file may move or be renamed).
    bool same_as(const TokenizerIdentity& o) const;
    // For messages: "bytes (256 tokens)", "sentencepiece 'demo.model'
    // (crc32c 1a2b3c4d, 1024 tokens)", "none (ids made elsewhere)".
    std::string describe() const;
};

// The metadata key of exported weights (moe-checkpoint export) that holds
// the identity of the tokenizer they were trained with.
constexpr const char* kTokenizerMetadataKey = "tokenizer";

// The identity as one line of YAML flow, {kind: ..., file: ..., crc32c: ...,
// vocab: ...}, and back; DataError when it is malformed.
std::string identity_yaml(const TokenizerIdentity& id);
TokenizerIdentity identity_from_yaml(const std::string& text);

class Tokenizer {
public:
    virtual ~Tokenizer() = default;
    const TokenizerIdentity& identity() const { return identity_; }
    int vocab_size() const { return identity_.vocab; }
    // DataError when the text cannot be encoded (none: not ids).
    virtual std::vector<int32_t> encode(const std::string& text) const = 0;
    // DataError for an id outside the vocabulary.
    virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

protected:
    explicit Tokenizer(TokenizerIdentity identity) : identity_(std::move(identity)) {}

private:
    TokenizerIdentity identity_;
};

// "bytes", "none", or the path of a SentencePiece model file. DataError, one
// line naming the file, when it cannot be read or holds no model, or when
// this build lacks SentencePiece.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// The tokenizer a run recorded: bytes and none as they are, a model read from
// path (where the run found it), which must be the recorded one.
std::unique_ptr<Tokenizer> load_recorded_tokenizer(const TokenizerIdentity& recorded, const std::string& path);

// Whether this build reads SentencePiece models.
bool have_sentencepiece();

// Text as it is made, a token at a time: what each new id adds to the text
// decoded so far. A character that a model spells in several byte tokens is
// held back until it is whole (until then it decodes to U+FFFD). Assumes the
// decoding of a sequence begins with the decoding of its prefixes, as it does
// for bytes, none and SentencePiece.
class TextStream {
public:
    explicit TextStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
    std::string next(int32_t id);
    std::string finish();  // what is still held back

private:
    const Tokenizer& tokenizer_;
    std::vector<int32_t> ids_;
    size_t emitted_ = 0;  // bytes of the decoded text handed out
};

}  // namespace moe
