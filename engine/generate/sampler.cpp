#include "engine/generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moe {

std::vector<Candidate> sampling_distribution(const float* logits, int64_t V, const SamplingOptions& options) {
    std::vector<int32_t> ids(static_cast<size_t>(V));
    std::iota(ids.begin(), ids.end(), 0);
    const auto more_likely = [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    if (options.temperature == 0) return {{*std::min_element(ids.begin(), ids.end(), more_likely), 1.0}};
    const size_t keep = options.top_k > 0 ? std::min(size_t(options.top_k), ids.size()) : ids.size();
    std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), more_likely);
    ids.resize(keep);

    std::vector<Candidate> out;
    double total = 0;
    const double top = logits[ids[0]];
    for (int32_t id : ids) {
        out.push_back({id, std::exp((logits[id] - top) / options.temperature)});
        total += out.back().p;
    }
    double mass = 0;  // of the candidates kept so far
    size_t nucleus = 0;
    for (Candidate& c : out) {
        c.p /= total;
        if (options.top_p >= 1 || mass < options.top_p) {
            mass += c.p;
            ++nucleus;
        }
    }
    out.resize(nucleus);
    for (Candidate& c : out) c.p /= mass;
    return out;
}

int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& options, Rng& rng) {
    const std::vector<Candidate> candidates = sampling_distribution(logits, V, options);
    if (options.temperature == 0) return candidates[0].id;
    double u = rng.uniform();
    for (const Candidate& c : candidates)
        if ((u -= c.p) < 0) return c.id;
    return candidates.back().id;  // rounding left u at the very end
}

}  // namespace moe
