#include "engine/generate/generator.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace moe {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Generator::Generator(Decoder& decoder, const SamplingOptions& sampling, uint64_t seed)
    : decoder_(decoder), sampling_(sampling), rng_(seed) {}

void Generator::read_logits() {
    const Tensor row = decoder_.logits().rows(decoder_.logits().dim(0) - 1, decoder_.logits().dim(0));
    logits_.resize(size_t(row.dim(1)));
    decoder_.ops().copy_to_host(logits_.data(), row);  // waits for a device
}

void Generator::restart(size_t keep) {
    decoder_.clear();
    for (size_t at = text_.size() - keep; at < text_.size();) {
        const int n = int(std::min(text_.size() - at, size_t(decoder_.rows())));
        decoder_.append(text_.data() + at, n);
        at += size_t(n);
    }
    read_logits();
}

GenerationStats Generator::run(const std::vector<int32_t>& prompt, int64_t count,
                               const std::function<void(int32_t)>& emit) {
    const size_t C = size_t(decoder_.positions()), slide_keep = std::max<size_t>(1, C / 2);
    if (prompt.empty()) throw std::invalid_argument("generation needs a prompt of at least one token");
    GenerationStats stats;
    text_ = prompt;
    auto start = std::chrono::steady_clock::now();
    stats.prompt_tokens = int64_t(std::min(text_.size(), C));
    restart(size_t(stats.prompt_tokens));
    stats.prefill_seconds = seconds_since(start);

    start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < count; ++i) {
        text_.push_back(sample_token(logits_.data(), int64_t(logits_.size()), sampling_, rng_));
        emit(text_.back());
        ++stats.generated;
        if (i + 1 == count) break;  // no logits wanted after the last token
        if (size_t(decoder_.length()) < C) {
            decoder_.append(&text_.back(), 1);
            read_logits();
        } else {
            restart(slide_keep);
            ++stats.slides;
            stats.reprefilled += int64_t(slide_keep);
        }
    }
    stats.generate_seconds = seconds_since(start);
    return stats;
}

}  // namespace moe
