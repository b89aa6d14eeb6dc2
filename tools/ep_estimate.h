// The step time of expert parallelism over the GPUs of one NVSwitch node
// (ep = the node's GPUs, dp 1), estimated from a measured one-GPU step and
// the links' bandwidths: what moe-bench prints for --estimate-ep.
//
// Each rank still computes its own micro-batch, so attention, routing, the
// dynamics and the head cost what they cost on one GPU. A rank's experts get
// the rows of one GPU on average (the ep ranks' ep*B*T*k rows spread over ep
// GPUs), but the step waits for the busiest rank: expert time grows with the
// load's max/mean. The optimizer updates the replicated parameters
// and only 1/ep of the experts. Added: the four all-to-alls of each layer
// (dispatch and combine, forward and backward; not overlapped with compute;
// a token sent once per rank that holds one of its experts)
// and the replicated gradients' all-reduce that the backward cannot hide (the
// first layer's and the embedding's, reduced after it).
#pragma once
#include <cstddef>

#include "engine/config/config.h"
#include "engine/model/model.h"

namespace moe {

// Measured on one GPU, per step.
struct OneGpuStep {
    double step_s = 0;       // the whole step
    double experts_s = 0;    // of which the expert GEMMs and activations
    double optimizer_s = 0;  // of which the gradient norm and AdamW
    double tokens = 0;       // tokens of the step (micro-batch x sequence)
};

// Effective bandwidths (bus bandwidth as nccl-tests reports it), GB/s. The
// defaults: NVLink 4's 450 GB/s line rate nets NCCL about 370 GB/s for
// non-all-reduce collectives, and NVLink SHARP all-reduce reaches about
// 480 GB/s bus bandwidth on 8 H100s (NCCL's maintainers, nccl-tests issue 212).
struct NodeLinks {
    double all_to_all_gbps = 370;
    double all_reduce_gbps = 480;
};

struct EpStepEstimate {
    double step_s, experts_s, all_to_all_s, all_reduce_s, optimizer_s;
};

// The ranks of ep (dividing the experts) that hold at least one of a
// token's top_k experts, in expectation under uniform routing: its
// group_limit groups (where there are groups) uniformly among all, then its
// experts uniformly among theirs; ranks hold contiguous experts, as groups do.
double ranks_per_token(const ModelConfig& m, int ep);
// Bytes one token moves in a step's all-to-alls over ep ranks, to every rank
// itself included: the dispatcher sends a token once to each rank holding
// one of its experts and gets one row back, so 4 exchanges a layer (dispatch
// and combine, forward and backward) of ranks_per_token bf16 rows of
// hidden_size; and per slot the index of its row and its fp32 weight out,
// and the weight's gradient back when the router trains.
double all_to_all_bytes_per_token(const ModelConfig& m, int ep);

// Bytes of replicated gradients whose all-reduce cannot run alongside the
// backward: the last bucket the backward hands over (the first layer's) and
// the parameters in no bucket (the embedding, shared dynamics), reduced after it.
size_t tail_reduce_bytes(const Model& model);

// ep: ranks of the node (> 1, dividing the experts); load_max_over_mean >= 1;
// expert_params_share: expert parameters over all; tail_reduce_bytes:
// replicated gradient bytes all-reduced after the backward. Out of range:
// std::invalid_argument.
EpStepEstimate estimate_ep_step(const ModelConfig& m, const OneGpuStep& one, int ep, double load_max_over_mean,
                                double expert_params_share, double tail_reduce_bytes, const NodeLinks& links);

}  // namespace moe
