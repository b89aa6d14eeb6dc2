// Where a step's time goes, for the benchmark: wall time per phase of the
// model (attention, experts, routing and permutation, dynamics, LM head and
// loss, optimizer). A timed scope waits for the backend's queued work at both
// ends, so GPU time lands in the phase that queued it; that costs pipelining,
// so it is on only when asked for (Model::set_phase_times). Timed or not, a
// scope is a profiler's range named for its phase (trace_range.h).
#pragma once
#include <array>
#include <chrono>

#include "engine/run/trace_range.h"
#include "kernels/ops.h"

namespace moe {

enum class Phase { Attention, Experts, Routing, Dynamics, Head, Optimizer, Other };
constexpr int kPhases = 7;

inline const char* phase_name(Phase p) {
    static const char* names[kPhases] = {"attention",      "experts",          "routing+permutation",
                                         "dynamics",       "lm head+loss",     "grad all-reduce+optimizer",
                                         "other (embedding, norms, residuals)"};
    return names[int(p)];
}

// The phase's profiler range: one word.
inline const char* phase_range_name(Phase p) {
    static const char* names[kPhases] = {"attention", "experts", "routing", "dynamics", "head", "optimizer", "other"};
    return names[int(p)];
}

struct PhaseTimes {
    std::array<double, kPhases> seconds{};
};

// Adds the scope's wall time to times->seconds[phase] (none when times is
// null), inside the phase's profiler range.
class PhaseScope {
public:
    PhaseScope(PhaseTimes* times, Ops& ops, Phase phase)
        : range_(phase_range_name(phase)), times_(times), ops_(ops), phase_(phase) {
        if (!times_) return;
        ops_.synchronize();
        start_ = std::chrono::steady_clock::now();
    }
    ~PhaseScope() {
        if (!times_) return;
        ops_.synchronize();
        times_->seconds[int(phase_)] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
    PhaseScope(const PhaseScope&) = delete;
    PhaseScope& operator=(const PhaseScope&) = delete;

private:
    TraceRange range_;  // first in, last out: the range holds the waits
    PhaseTimes* times_;
    Ops& ops_;
    Phase phase_;
    std::chrono::steady_clock::time_point start_;
};

}  // namespace moe
