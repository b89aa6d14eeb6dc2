#include "engine/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace moe {

namespace {

// From lr at progress 0 to min_lr at progress 1.
double decayed(const OptimizerConfig& cfg, double progress, DecayShape shape) {
    const double span = cfg.lr - cfg.min_lr;
    switch (shape) {
        case DecayShape::linear:
            return cfg.min_lr + span * (1 - progress);
        case DecayShape::sqrt:
            return cfg.min_lr + span * (1 - std::sqrt(progress));
        case DecayShape::cosine:
            break;
    }
    return cfg.min_lr + 0.5 * span * (1.0 + std::cos(M_PI * progress));
}

}  // namespace

double learning_rate(const OptimizerConfig& cfg, int64_t step, int64_t total_steps) {
    if (step < cfg.warmup_steps) return cfg.lr * double(step + 1) / double(cfg.warmup_steps);
    switch (cfg.schedule) {
        case LrSchedule::constant:
            return cfg.lr;
        case LrSchedule::wsd: {
            // The decay's steps end at min_lr: step total - 1 takes it.
            const int64_t decay = wsd_decay_steps(cfg, int(total_steps));
            const int64_t start = total_steps - decay;
            if (step < start) return cfg.lr;
            return decayed(cfg, double(step - start + 1) / double(decay), cfg.decay_shape);
        }
        case LrSchedule::cosine:
            break;
    }
    const int64_t decay_steps = std::max<int64_t>(1, total_steps - cfg.warmup_steps);
    const double progress = std::min(1.0, double(step - cfg.warmup_steps) / double(decay_steps));
    return decayed(cfg, progress, DecayShape::cosine);
}

}  // namespace moe
