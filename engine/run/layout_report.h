// The job's layout, as rank 0 reports it at start: the nodes and their ranks,
// each rank's device, the expert-parallel and expert-data-parallel groups. It
// is what to read first when a job is slow or hangs: which ranks share a node
// (and so a network link), which exchange tokens (EP), which average expert
// gradients (expert DP).
#pragma once
#include <string>
#include <vector>

#include "comm/process_groups.h"

namespace moe {

struct RankPlace {
    std::string host;    // the node's hostname
    std::string device;  // "cpu", or a GPU such as "cuda:0"
};

// This node's hostname.
std::string host_name();
// This rank's index among the ranks on its node (by hostname): which GPU of
// the node it takes. Collective over the world.
int local_rank(Communicator& world);

// Every rank's place, in rank order, on every rank. Collective over the world.
std::vector<RankPlace> gather_places(Communicator& world, const std::string& device);

// The report's lines (no trailing newline). ep: the expert-parallel size;
// experts_per_rank for the header line.
std::string layout_report(const std::vector<RankPlace>& places, int ep, int experts_per_rank);

// Empty, or one line naming two ranks of a node that would share a GPU and the
// fix. Every rank computes the same answer from the same places.
std::string shared_gpu_problem(const std::vector<RankPlace>& places);

}  // namespace moe
