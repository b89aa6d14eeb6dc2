// Sampling the next token: greedy, temperature, top-k, top-p and both, on a
// distribution whose nucleus is known exactly; draws that follow it and
// repeat for a seed.
#include <cmath>
#include <map>
#include <vector>

#include "engine/generate/sampler.h"
#include "tests/catch.h"

using namespace moe;

namespace {

// Probabilities by id at temperature 1: 3 (0.4) > 0 (0.3) > 5 (0.15) > 1 (0.1)
// > 2 (0.05) > 4 (1e-12). Cumulative, most likely first: 0.4, 0.7, 0.85, 0.95.
const std::vector<double> kProbs = {0.3, 0.1, 0.05, 0.4, 1e-12, 0.15};

std::vector<float> logits_of(const std::vector<double>& p) {
    std::vector<float> l;
    for (double x : p) l.push_back(float(std::log(x)));
    return l;
}

SamplingOptions options(double temperature, int64_t top_k, double top_p) {
    SamplingOptions o;
    o.temperature = temperature;
    o.top_k = top_k;
    o.top_p = top_p;
    return o;
}

// The candidates' ids in order, and their probabilities against expected.
void require_candidates(const std::vector<Candidate>& got, const std::vector<std::pair<int32_t, double>>& expected) {
    REQUIRE(got.size() == expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
        INFO("candidate " << i);
        REQUIRE(got[i].id == expected[i].first);
        REQUIRE(got[i].p == Approx(expected[i].second).epsilon(1e-6));
    }
}

}  // namespace

TEST_CASE("top-p keeps the fewest most likely tokens whose probability reaches p, renormalised", "[unit]") {
    const std::vector<float> l = logits_of(kProbs);
    const auto dist = [&](double top_p) { return sampling_distribution(l.data(), 6, options(1, 0, top_p)); };
    require_candidates(dist(0.65), {{3, 0.4 / 0.7}, {0, 0.3 / 0.7}});
    require_candidates(dist(0.75), {{3, 0.4 / 0.85}, {0, 0.3 / 0.85}, {5, 0.15 / 0.85}});
    require_candidates(dist(0.3), {{3, 1.0}});  // the most likely alone reaches it
    REQUIRE(dist(1.0).size() == 6);
    REQUIRE(dist(0.96).size() == 5);  // 0.95 falls short of it, 1.0 reaches it: the 1e-12 is left out
}

TEST_CASE("top-k keeps the k most likely, ties to the lower id, and top-p applies to what it kept", "[unit]") {
    const std::vector<float> l = logits_of(kProbs);
    require_candidates(sampling_distribution(l.data(), 6, options(1, 2, 1)), {{3, 0.4 / 0.7}, {0, 0.3 / 0.7}});
    // Top-3 renormalised: 0.47, 0.35, 0.18; p 0.8 is reached by two of them,
    // where over all six tokens it takes three (0.4 + 0.3 < 0.8).
    require_candidates(sampling_distribution(l.data(), 6, options(1, 3, 0.8)), {{3, 0.4 / 0.7}, {0, 0.3 / 0.7}});
    REQUIRE(sampling_distribution(l.data(), 6, options(1, 0, 0.8)).size() == 3);
    const std::vector<float> tied = {1, 2, 2, 0};
    require_candidates(sampling_distribution(tied.data(), 4, options(1, 1, 1)), {{1, 1.0}});
}

TEST_CASE("temperature flattens or sharpens, and 0 takes the most likely without a draw", "[unit]") {
    const std::vector<float> l = logits_of(kProbs);
    // At temperature 2 each probability goes as sqrt(p).
    const std::vector<Candidate> warm = sampling_distribution(l.data(), 6, options(2, 2, 1));
    const double a = std::sqrt(0.4), b = std::sqrt(0.3);
    require_candidates(warm, {{3, a / (a + b)}, {0, b / (a + b)}});
    require_candidates(sampling_distribution(l.data(), 6, options(0, 0, 0.5)), {{3, 1.0}});
    Rng rng(1), untouched(1);
    REQUIRE(sample_token(l.data(), 6, options(0, 40, 1), rng) == 3);
    REQUIRE(rng.next() == untouched.next());  // greedy draws nothing
}

TEST_CASE("draws follow the filtered distribution and repeat for a seed", "[unit]") {
    const std::vector<float> l = logits_of(kProbs);
    const SamplingOptions o = options(1, 0, 0.75);
    Rng rng(42), again(42);
    std::map<int32_t, int> counts;
    const int draws = 20000;
    for (int i = 0; i < draws; ++i) {
        const int32_t id = sample_token(l.data(), 6, o, rng);
        REQUIRE(id == sample_token(l.data(), 6, o, again));
        ++counts[id];
    }
    REQUIRE(counts.size() == 3);  // only the nucleus {3, 0, 5}
    // Binomial standard deviations are below 0.004 at 20000 draws: 0.015 is
    // some 4 of them, and the draws are fixed by the seed.
    REQUIRE(counts[3] / double(draws) == Approx(0.4 / 0.85).margin(0.015));
    REQUIRE(counts[0] / double(draws) == Approx(0.3 / 0.85).margin(0.015));
    REQUIRE(counts[5] / double(draws) == Approx(0.15 / 0.85).margin(0.015));
}
