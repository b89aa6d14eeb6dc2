// A test seam outside the engine, for killing moe-train in the middle of a
// save: loaded with LD_PRELOAD, it holds each checkpoint for
// MOE_STALL_PUBLISH_S seconds at the moment it would be published (the
// rename of the complete step-N.tmp directory to step-N), then lets the
// rename through. The engine itself consults nothing.
#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

extern "C" int rename(const char* from, const char* to) {
    using Rename = int (*)(const char*, const char*);
    static const Rename real = reinterpret_cast<Rename>(dlsym(RTLD_NEXT, "rename"));
    const char* base = std::strrchr(from, '/');
    base = base ? base + 1 : from;
    const size_t n = std::strlen(base);
    const char* stall = std::getenv("MOE_STALL_PUBLISH_S");
    if (stall && std::strncmp(base, "step-", 5) == 0 && n > 4 && std::strcmp(base + n - 4, ".tmp") == 0)
        std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(stall)));
    return real(from, to);
}
