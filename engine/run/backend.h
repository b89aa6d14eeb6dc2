// The compute backend of a run (run.device): the CPU, or one GPU per rank,
// the GPU of the rank's local rank on its node.
#pragma once
#include <memory>
#include <optional>

#include "comm/communicator.h"
#include "engine/config/config.h"
#include "kernels/ops.h"

namespace moe {

// Whether this build has the CUDA backend (cmake found a CUDA toolkit).
bool cuda_backend_built();

// run.device cpu | cuda | auto (the GPU when this build has CUDA and a GPU is
// visible, else the CPU). world: every rank calls it (the local rank is
// found collectively); null for a single process. Throws ConfigError when
// cuda is asked for and cannot be had.
std::unique_ptr<Ops> make_backend(const RunConfig& run, Communicator* world);

// The memory of the GPU a single process would take (the first visible one),
// when this build has CUDA and a GPU is visible: what --plan holds a GPU
// layout against.
std::optional<size_t> gpu_memory();

// Whether this build has the NCCL communicator.
bool nccl_built();

// The world communicator for ops' buffers (parallel.comm): over NCCL when ops
// is a GPU backend, NCCL is built, each rank has its own GPU and comm is auto
// or nccl; else `world` itself (MPI, staging GPU buffers through host
// memory). Collective over world; throws JobError (on every rank) when nccl
// cannot be had.
std::unique_ptr<Communicator> world_for_backend(std::unique_ptr<Communicator> world, Ops& ops,
                                                const ParallelConfig& parallel);

}  // namespace moe
