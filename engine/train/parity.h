// The parity entry point: one forward/backward from given weights on a given
// batch, writing the loss and every gradient (safetensors, MODEL.md names),
// for tools and reviewers that compare against a PyTorch model.
#pragma once
#include <string>

#include "engine/config/config.h"
#include "kernels/ops.h"

namespace moe {

struct ParityRequest {
    std::string batch;       // safetensors with 'inputs' and 'targets', I32 [B, T]
    std::string init_from;   // weights; empty: the seeded initialisation
    std::string dump_grads;  // output
    DType dtype = DType::F32;
};

// Returns the loss (cross-entropy + aux) it wrote.
double run_parity(const ModelConfig& cfg, uint64_t seed, Ops& ops, const ParityRequest& req);

}  // namespace moe
