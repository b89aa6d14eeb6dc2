// The next token from a row of logits: greedy, or a draw after temperature,
// top-k and top-p (nucleus) filtering, in that order (as Hugging Face's
// generate applies them). Computed in double on the host; the same logits,
// options and generator state give the same token.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/params/rng.h"

namespace moe {

struct SamplingOptions {
    double temperature = 0.8;  // 0: the most likely token (greedy), no draw
    int64_t top_k = 40;        // keep the k most likely tokens; 0: all
    double top_p = 1.0;        // in (0, 1]: keep the fewest most likely tokens whose probability reaches it; 1: all
};

// A token and the probability it is drawn with.
struct Candidate {
    int32_t id;
    double p;
};

// The distribution a token is drawn from, most likely first (ties: the lower
// id): the top_k most likely of the V logits, softmax(logits / temperature)
// over them, then the shortest prefix whose probabilities sum to top_p or
// more, renormalised. Greedy: the most likely token alone, p 1.
std::vector<Candidate> sampling_distribution(const float* logits, int64_t V, const SamplingOptions& options);

// A token drawn from sampling_distribution with one rng.uniform() (none when
// greedy).
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& options, Rng& rng);

}  // namespace moe
