// The parallel layout: world = ep * dp. An expert-parallel (EP) group is
// `ep` consecutive ranks (so it stays within a node) that split the experts
// between them; the expert-data-parallel group is the ranks holding the same
// experts (the same rank in their EP group), over which expert gradients are
// averaged.
#pragma once
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace moe {

struct ProcessGroups {
    std::unique_ptr<Communicator> world;
    std::unique_ptr<Communicator> ep;         // world ranks [g*ep, (g+1)*ep), g = world_rank / ep
    std::unique_ptr<Communicator> expert_dp;  // world ranks with the same world_rank % ep

    int world_rank() const { return world->rank(); }
    int world_size() const { return world->size(); }
    int ep_rank() const { return ep->rank(); }
    int ep_size() const { return ep->size(); }
    int dp_rank() const { return expert_dp->rank(); }
    int dp_size() const { return expert_dp->size(); }
};

// Splits `world` into the groups for parallel.expert_parallel = expert_parallel.
// Collective over world. A layout that does not fit throws JobError on every
// rank (the check uses only the world size, which every rank knows).
ProcessGroups make_process_groups(std::unique_ptr<Communicator> world, int expert_parallel);
// The same over MPI's world; MPI must be running (see MpiRuntime).
ProcessGroups make_process_groups(int expert_parallel);

}  // namespace moe
