// Named ranges on the host's timeline for profilers (NVTX push/pop ranges in
// the default domain): Nsight Systems draws them above the kernels they
// launched, Nsight Compute profiles only the kernels inside one (`ncu --nvtx
// --nvtx-include "step 3/"`). The names and their nesting are in README
// "Profiling". With no profiler attached an NVTX call returns at once; a
// build without NVTX's headers (they come with the CUDA toolkit) has none.
#pragma once
#include <string>

#if MOE_HAVE_NVTX
#include <nvtx3/nvToolsExt.h>
#endif

namespace moe {

class TraceRange {
public:
    explicit TraceRange(const char* name) {
#if MOE_HAVE_NVTX
        nvtxRangePushA(name);
#else
        (void)name;
#endif
    }
    explicit TraceRange(const std::string& name) : TraceRange(name.c_str()) {}
    ~TraceRange() {
#if MOE_HAVE_NVTX
        nvtxRangePop();
#endif
    }
    TraceRange(const TraceRange&) = delete;
    TraceRange& operator=(const TraceRange&) = delete;
};

// "layer 3", "step 12": a name with its index.
inline std::string indexed(const char* what, long long i) { return std::string(what) + " " + std::to_string(i); }

}  // namespace moe
