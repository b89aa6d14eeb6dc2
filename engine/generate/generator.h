// Text generation over a Decoder: the prompt prefilled in chunks, then one
// position per sampled token, and what happens when the context outgrows the
// cache.
//
// Context: the cache holds C = decoder.positions() positions (a model's
// train.seq_len, the positions it was trained at). A prompt longer than C
// keeps its last C tokens. When the cache is full, the next token restarts it
// from the last C/2 tokens of the text (at least one), prefilled again at
// positions 0.. (RoPE positions as in training, where every sequence starts at
// 0): the model sees between C/2 and C tokens of context, and a slide costs
// one prefill of C/2 positions every C/2 tokens, where a window moved by one
// token would cost C positions every token.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/generate/sampler.h"
#include "engine/model/decoder.h"
#include "engine/params/rng.h"

namespace moe {

// Where a generation's time went.
struct GenerationStats {
    int64_t prompt_tokens = 0;     // prefilled from the prompt
    double prefill_seconds = 0;    // the prompt's prefill, up to its logits on the host
    int64_t generated = 0;         // tokens sampled
    double generate_seconds = 0;   // everything after the prefill: steps, slides, sampling
    int64_t slides = 0;            // cache restarts
    int64_t reprefilled = 0;       // positions prefilled again by them
};

class Generator {
public:
    // The decoder's parameters must be loaded; seed: the draws' generator.
    Generator(Decoder& decoder, const SamplingOptions& sampling, uint64_t seed);

    // Prefills the prompt (at least one token, ids in [0, V)), then samples
    // count tokens, handing each to emit as soon as it is drawn.
    GenerationStats run(const std::vector<int32_t>& prompt, int64_t count,
                        const std::function<void(int32_t)>& emit);

private:
    // Clears the cache and prefills its last `keep` tokens of the text, in
    // chunks of the decoder's rows; the logits of the last come to the host.
    void restart(size_t keep);
    void read_logits();

    Decoder& decoder_;
    SamplingOptions sampling_;
    Rng rng_;
    std::vector<int32_t> text_;  // the prompt and every token drawn
    std::vector<float> logits_;  // [V]: of the last position in the cache
};

}  // namespace moe
