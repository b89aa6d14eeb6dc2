// Generation with the KV cache against generation without it: the same seed
// gives the same tokens as sampling from full forwards (Model::forward) over
// the context the cache holds, through prompts longer than the cache and
// cache restarts; and what the generator reports of them.
#include <algorithm>
#include <vector>

#include "engine/generate/generator.h"
#include "engine/model/decoder.h"
#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_models.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int kC = 16;  // the cache's positions (the model's train.seq_len)

ModelConfig generator_test_model() { return test_model({37, 32, 2, 4, 2, 4, 24, 8, 0.3}); }

std::vector<int32_t> prompt_of(int n) {
    Rng rng(9, "generator prompt");
    std::vector<int32_t> ids;
    for (int i = 0; i < n; ++i) ids.push_back(int32_t(rng.next() % 37));
    return ids;
}

// Without a cache: each token sampled from a full forward over the context
// the generator documents, the last min(prompt, C) tokens of the prompt, one
// more per token, and the last C/2 after a token that found the cache full.
std::vector<int32_t> without_cache(const ModelConfig& mc, const std::vector<int32_t>& prompt, int64_t count,
                                   const SamplingOptions& sampling, uint64_t seed) {
    CpuOps ops;
    Model model(mc, ops, Precision(DType::F32), 1, kC);
    model.params().initialize(7);
    Rng rng(seed);
    std::vector<int32_t> text = prompt, window(kC);
    std::vector<float> logits(size_t(mc.vocab_size));
    size_t context = std::min(text.size(), size_t(kC));
    for (int64_t i = 0; i < count; ++i) {
        std::fill(window.begin(), window.end(), 0);  // padding after the context: causal, never read
        std::copy(text.end() - long(context), text.end(), window.begin());
        model.forward(window.data(), window.data());
        ops.copy_to_host(logits.data(), model.logits().rows(long(context) - 1, long(context)));
        text.push_back(sample_token(logits.data(), mc.vocab_size, sampling, rng));
        context = context < size_t(kC) ? context + 1 : kC / 2;
    }
    return std::vector<int32_t>(text.begin() + long(prompt.size()), text.end());
}

struct Generated {
    std::vector<int32_t> tokens;
    GenerationStats stats;
};

Generated with_cache(const ModelConfig& mc, const std::vector<int32_t>& prompt, int64_t count,
                     const SamplingOptions& sampling, uint64_t seed, int rows) {
    CpuOps ops;
    Decoder decoder(mc, ops, kC, rows);
    decoder.params().initialize(7);
    Generator generator(decoder, sampling, seed);
    Generated g;
    g.stats = generator.run(prompt, count, [&](int32_t id) { g.tokens.push_back(id); });
    return g;
}

SamplingOptions nucleus() {
    SamplingOptions s;
    s.temperature = 1.0;
    s.top_k = 0;
    s.top_p = 0.9;
    return s;
}

}  // namespace

TEST_CASE("the same seed gives the same tokens with and without the cache", "[unit]") {
    const ModelConfig mc = generator_test_model();
    const std::vector<int32_t> prompt = prompt_of(5);
    const Generated g = with_cache(mc, prompt, 10, nucleus(), 3, 4);
    REQUIRE(g.tokens == without_cache(mc, prompt, 10, nucleus(), 3));
    REQUIRE(g.tokens != with_cache(mc, prompt, 10, nucleus(), 4, 4).tokens);  // the seed matters
    REQUIRE(g.stats.prompt_tokens == 5);
    REQUIRE(g.stats.generated == 10);
    REQUIRE(g.stats.slides == 0);  // 5 + 9 positions fit in 16
    SamplingOptions greedy;
    greedy.temperature = 0;
    REQUIRE(with_cache(mc, prompt, 10, greedy, 1, 4).tokens == without_cache(mc, prompt, 10, greedy, 1));
}

TEST_CASE("contexts longer than the cache: the prompt keeps its last C tokens, a full cache restarts from C/2",
          "[unit]") {
    const ModelConfig mc = generator_test_model();
    const std::vector<int32_t> prompt = prompt_of(21);
    const Generated g = with_cache(mc, prompt, 30, nucleus(), 5, 3);
    REQUIRE(g.tokens == without_cache(mc, prompt, 30, nucleus(), 5));
    REQUIRE(g.stats.prompt_tokens == kC);
    // The prompt fills the cache: tokens 1, 10, 19 and 28 each find it full
    // and restart it from the last 8 tokens of the text, themselves included.
    REQUIRE(g.stats.slides == 4);
    REQUIRE(g.stats.reprefilled == 4 * kC / 2);
    REQUIRE(g.stats.generated == 30);
}
