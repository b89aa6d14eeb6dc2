#include "engine/backend.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include "engine/layout_report.h"
#include "kernels/cpu/cpu_ops.h"
#if MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace moe {

bool cuda_backend_built() { return MOE_HAVE_CUDA != 0; }

namespace {
int visible_gpus() {
#if MOE_HAVE_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
}
}  // namespace

std::unique_ptr<Ops> make_backend(const RunConfig& run, Communicator* world) {
    const int local = world ? local_rank(*world) : 0;  // collective: every rank, every device
    const int gpus = visible_gpus();
    if (run.device == "cuda" && !cuda_backend_built())
        throw ConfigError("config: run.device is 'cuda' but this build has no CUDA backend: rebuild where cmake "
                          "finds a CUDA toolkit (-DMOE_CUDA=ON), or set run.device=cpu");
    if (run.device == "cuda" && gpus == 0)
        throw ConfigError("config: run.device is 'cuda' but no GPU is visible to this process (check the driver "
                          "with nvidia-smi and CUDA_VISIBLE_DEVICES), or set run.device=cpu");
    if (run.device == "cpu" || gpus == 0) {
        if (run.device == "auto") spdlog::info("run.device=auto: no GPU visible, using the CPU backend");
        if (run.threads > 0) omp_set_num_threads(run.threads);
        return std::make_unique<CpuOps>();
    }
#if MOE_HAVE_CUDA
    // One rank per GPU: a node's ranks take its GPUs in order; more ranks than
    // GPUs share them round-robin (refused later unless allowed).
    return std::make_unique<CudaOps>(local % gpus);
#else
    (void)local;
    throw ConfigError("unreachable: no CUDA backend");
#endif
}

}  // namespace moe
