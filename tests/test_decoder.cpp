// The decoder (KV-cache generation) against the full forward on the CPU: the
// logits of every position, prefilled in chunks or appended one at a time, for
// every router and dynamics variant; generation is dropless whatever the
// model's capacity; appends past the cache or of bad ids are refused.
//
// Tolerance: none. The decoder runs the same CPU kernels in the same order on
// each position's row (the matmul tiles sum every element in the same order
// whatever the row count, and attention_decode runs attention_forward's
// per-query loop), so its logits equal the full forward's bit for bit; a
// difference is a bug, not rounding.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/model/decoder.h"
#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_models.h"
#include "tests/test_util.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int kT = 24;  // the cache's positions, the full forward's sequence

// Two layers, GQA, top-2 of 4 experts, shared dynamics; init_std 0.3 so that
// every path moves the logits visibly.
ModelConfig decoder_test_model() { return test_model({37, 32, 2, 4, 2, 4, 24, 8, 0.3}); }

std::vector<int32_t> random_tokens(int n, int V, uint64_t seed) {
    Rng rng(seed, "decoder tokens");
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& id : ids) id = int32_t(rng.next() % uint64_t(V));
    return ids;
}

// The states (expert biases) away from their zero start, the same for the
// Model and the Decoder: each from a stream named after it.
void perturb_states(ParameterSet& params, Ops& ops) {
    for (Param& p : params.states()) {
        Rng rng(11, p.name);
        std::vector<float> v(static_cast<size_t>(p.numel()));
        for (float& x : v) x = float(0.05 * rng.normal());
        ops.copy_from_host(p.value, v.data());
    }
}

// The full forward's logits [kT, V] over tokens (kT of them).
std::vector<float> full_logits(const ModelConfig& mc, CpuOps& ops, const std::vector<int32_t>& tokens,
                               int64_t* dropped = nullptr) {
    Model model(mc, ops, Precision(DType::F32), 1, kT);
    model.params().initialize(7);
    perturb_states(model.params(), ops);
    const ForwardResult r = model.forward(tokens.data(), tokens.data());
    if (dropped) *dropped = r.dropped();
    std::vector<float> logits(size_t(kT) * mc.vocab_size);
    ops.copy_to_host(logits.data(), model.logits());
    return logits;
}

// The decoder's logits [kT, V] over the same tokens: the first `prefill`
// appended in chunks of `rows`, then one at a time.
std::vector<float> decoded_logits(const ModelConfig& mc, CpuOps& ops, const std::vector<int32_t>& tokens, int rows,
                                  int prefill) {
    Decoder decoder(mc, ops, kT, rows);
    decoder.params().initialize(7);  // each tensor from its own named stream: the Model's weights
    perturb_states(decoder.params(), ops);
    std::vector<float> logits;
    const auto append = [&](int at, int n) {
        decoder.append(tokens.data() + at, n);
        std::vector<float> part(size_t(n) * mc.vocab_size);
        ops.copy_to_host(part.data(), decoder.logits());
        logits.insert(logits.end(), part.begin(), part.end());
    };
    for (int at = 0; at < prefill; at += rows) append(at, std::min(rows, prefill - at));
    for (int at = prefill; at < kT; ++at) append(at, 1);
    REQUIRE(decoder.length() == kT);
    return logits;
}

double max_abs_difference(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
    return m;
}

void check_against_full_forward(const ModelConfig& mc) {
    CpuOps ops;
    const std::vector<int32_t> tokens = random_tokens(kT, mc.vocab_size, 3);
    const std::vector<float> full = full_logits(mc, ops, tokens);
    // One position at a time; a prefill of 10 in chunks of 4 (the last one
    // short) then steps; the whole sequence in one chunk.
    const std::pair<int, int> chunkings[] = {{1, 0}, {4, 10}, {kT, kT}};  // (rows, prefill)
    for (const auto& [rows, prefill] : chunkings) {
        INFO("rows " << rows << ", prefill " << prefill);
        REQUIRE(max_abs_difference(decoded_logits(mc, ops, tokens, rows, prefill), full) == 0);
    }
}

}  // namespace

TEST_CASE("decoder logits equal the full forward's at every position: learned router, shared dynamics", "[unit]") {
    check_against_full_forward(decoder_test_model());
}

TEST_CASE("decoder logits equal the full forward's: token_id router, raw top-k weights", "[unit]") {
    ModelConfig token_id = decoder_test_model();
    token_id.moe.router = RouterKind::token_id;
    token_id.moe.top_k = 1;
    check_against_full_forward(token_id);
    ModelConfig raw = decoder_test_model();
    raw.moe.normalize_top_k = false;
    check_against_full_forward(raw);
}

TEST_CASE("decoder logits equal the full forward's: qk-norm with tied embeddings, dynamics per layer or off",
          "[unit]") {
    ModelConfig qk = decoder_test_model();
    qk.qk_norm = true;
    qk.tie_embeddings = true;
    check_against_full_forward(qk);
    ModelConfig per_layer = decoder_test_model();
    per_layer.dynamics.shared = false;
    check_against_full_forward(per_layer);
    ModelConfig off = decoder_test_model();
    off.dynamics.enabled = false;
    check_against_full_forward(off);
}

TEST_CASE("decoder logits equal the full forward's: shared experts, one or two of another inner size", "[unit]") {
    ModelConfig one = decoder_test_model();
    one.moe.shared_experts = 1;
    check_against_full_forward(one);
    ModelConfig two = decoder_test_model();
    two.moe.shared_experts = 2;
    two.moe.shared_expert_hidden_size = 16;
    two.moe.router = RouterKind::token_id;
    two.moe.top_k = 1;
    check_against_full_forward(two);
}

TEST_CASE("decoder logits equal the full forward's: an expert bias, sigmoid scores within groups", "[unit]") {
    ModelConfig biased = decoder_test_model();
    biased.moe.expert_bias_rate = 0.001;
    check_against_full_forward(biased);
    CpuOps ops;
    const std::vector<int32_t> tokens = random_tokens(kT, biased.vocab_size, 3);
    REQUIRE(max_abs_difference(full_logits(biased, ops, tokens), full_logits(decoder_test_model(), ops, tokens)) > 0);
    ModelConfig grouped = biased;
    grouped.moe.score = RouterScore::sigmoid;
    grouped.moe.z_loss_weight = 0;
    grouped.moe.groups = 2;
    grouped.moe.group_limit = 1;
    check_against_full_forward(grouped);
}

TEST_CASE("decoder logits equal the full forward's under a capacity that drops nothing", "[unit]") {
    ModelConfig mc = decoder_test_model();
    mc.moe.capacity_factor = 2.0;  // ceil(2 N k / E) = N slots per expert: room for every token's slot
    CpuOps ops;
    int64_t dropped = -1;
    full_logits(mc, ops, random_tokens(kT, mc.vocab_size, 3), &dropped);
    REQUIRE(dropped == 0);
    check_against_full_forward(mc);
}

TEST_CASE("generation is dropless: a capacity that drops in training does not apply", "[unit]") {
    ModelConfig capped = decoder_test_model();
    capped.moe.capacity_factor = 0.5;  // half the mean load per expert: the full forward drops slots
    const ModelConfig dropless = decoder_test_model();
    CpuOps ops;
    const std::vector<int32_t> tokens = random_tokens(kT, capped.vocab_size, 3);
    int64_t dropped = 0;
    const std::vector<float> full_capped = full_logits(capped, ops, tokens, &dropped);
    REQUIRE(dropped > 0);
    const std::vector<float> decoded = decoded_logits(capped, ops, tokens, 8, 8);
    // The decoder with the capped config is the dropless model's forward, not the capped one's.
    REQUIRE(max_abs_difference(decoded, full_logits(dropless, ops, tokens)) == 0);
    REQUIRE(max_abs_difference(decoded, full_capped) > 0);
}

TEST_CASE("the decoder refuses appends past its cache or its rows, and token ids outside the vocabulary",
          "[unit]") {
    const ModelConfig mc = decoder_test_model();
    CpuOps ops;
    Decoder decoder(mc, ops, 8, 4);
    decoder.params().initialize(7);
    const std::vector<int32_t> ids = random_tokens(8, mc.vocab_size, 5);
    const auto refused = [&](const int32_t* at, int n, const std::string& why) {
        const std::string message = error_of<std::invalid_argument>([&] { decoder.append(at, n); });
        INFO(message);
        REQUIRE(message.find(why) != std::string::npos);
    };
    refused(ids.data(), 5, "at most 4 at a time");
    decoder.append(ids.data(), 4);
    decoder.append(ids.data() + 4, 3);
    REQUIRE(decoder.length() == 7);
    refused(ids.data(), 2, "cannot append 2 positions to 7 of 8");
    const int32_t bad = mc.vocab_size;
    refused(&bad, 1, "token id 37 is outside [0, 37)");
    REQUIRE(decoder.length() == 7);  // a refused append changes nothing
    decoder.clear();
    decoder.append(ids.data(), 1);
    REQUIRE(decoder.length() == 1);
    REQUIRE(decoder.logits().dim(0) == 1);
}
