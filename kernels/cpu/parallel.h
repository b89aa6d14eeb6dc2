// When a CPU op splits its loop over OpenMP threads. Waking a team costs
// microseconds (far more on a loaded machine), so small ops, such as every op
// of a gradient check, run on the calling thread: `#pragma omp parallel for
// if (worth_threads(work))`. Results never depend on this choice, since each
// output is computed by one thread in a fixed order either way.
#pragma once
#include <cstdint>

namespace moe {

// Multiply-adds (or elements, for elementwise ops) below which one thread wins.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

inline bool worth_threads(int64_t work) { return work >= kMinParallelWork; }

}  // namespace moe
