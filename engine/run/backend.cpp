#include "engine/run/backend.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include "comm/agreement.h"
#include "engine/run/layout_report.h"
#include "kernels/cpu/cpu_ops.h"
#if MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif
#if MOE_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace moe {

bool cuda_backend_built() { return MOE_HAVE_CUDA != 0; }

bool nccl_built() { return MOE_HAVE_NCCL != 0; }

namespace {
int visible_gpus() {
#if MOE_HAVE_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
}
}  // namespace

std::optional<size_t> gpu_memory() {
#if MOE_HAVE_CUDA
    if (visible_gpus() > 0) return cuda_device_memory(0);
#endif
    return std::nullopt;
}

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
        if (run.threads > omp_get_num_procs())
            throw ConfigError("config: run.threads is " + std::to_string(run.threads) + " but this machine has " +
                              std::to_string(omp_get_num_procs()) + " cores: more threads than cores only slow the "
                              "run; set run.threads to at most " + std::to_string(omp_get_num_procs()) +
                              ", or 0 for every core");
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

std::unique_ptr<Communicator> world_for_backend(std::unique_ptr<Communicator> world, Ops& ops,
                                                const ParallelConfig& parallel) {
    if (parallel.comm == "mpi" || ops.device() != Device::CUDA) return world;
    // NCCL refuses two ranks on one GPU: every rank must see the same answer.
    const std::string shared = shared_gpu_problem(gather_places(*world, ops.device_name()));
    const bool asked = parallel.comm == "nccl";
    // Every rank sees the same config, build and places: the same answer.
    if (asked && !nccl_built())
        throw JobError(0, "config: parallel.comm is 'nccl' but this build has no NCCL: install NCCL where cmake "
                          "finds it (next to CUDA), or set parallel.comm=mpi");
    if (asked && !shared.empty())
        throw JobError(0, "config: parallel.comm is 'nccl' but " + shared.substr(0, shared.find(": start")) +
                              ", which NCCL refuses: set parallel.comm=mpi");
    if (!nccl_built() || !shared.empty()) return world;
#if MOE_HAVE_NCCL
    return std::make_unique<NcclCommunicator>(std::move(world), static_cast<CudaOps&>(ops).stream());
#else
    return world;
#endif
}

}  // namespace moe
