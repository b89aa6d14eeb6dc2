// A profiler in miniature, for the test of the engine's profiler ranges: NVTX
// loads it from NVTX_INJECTION64_PATH as it loads Nsight's own library, and
// it writes each range push and pop to the file MOE_NVTX_RECORD, a line each
// ("+name", "-"). The engine itself consults nothing.
#include <nvtx3/nvToolsExt.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace {

std::FILE* record = nullptr;
std::mutex record_lock;

int push(const char* name) {
    const std::lock_guard<std::mutex> hold(record_lock);
    std::fprintf(record, "+%s\n", name);
    return 0;
}

int pop() {
    const std::lock_guard<std::mutex> hold(record_lock);
    std::fputs("-\n", record);
    return 0;
}

}  // namespace

// NVTX's entry point for a tool: it fills the core API's slots it serves.
extern "C" __attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t export_table) {
    const char* path = std::getenv("MOE_NVTX_RECORD");
    if (!path || !(record = std::fopen(path, "w"))) return 0;
    std::setvbuf(record, nullptr, _IOLBF, 0);  // lines kept should the run die
    const auto* callbacks = static_cast<const NvtxExportTableCallbacks*>(export_table(NVTX_ETID_CALLBACKS));
    NvtxFunctionTable core = nullptr;
    unsigned int slots = 0;
    if (!callbacks || !callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &core, &slots) ||
        slots <= NVTX_CBID_CORE_RangePop)
        return 0;
    *core[NVTX_CBID_CORE_RangePushA] = reinterpret_cast<NvtxFunctionPointer>(&push);
    *core[NVTX_CBID_CORE_RangePop] = reinterpret_cast<NvtxFunctionPointer>(&pop);
    return 1;
}
