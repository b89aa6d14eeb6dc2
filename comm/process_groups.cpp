#include "comm/process_groups.h"

#include "comm/agreement.h"
#include "comm/mpi_communicator.h"

namespace moe {

ProcessGroups make_process_groups(std::unique_ptr<Communicator> world, int expert_parallel) {
    const int world_size = world->size();
    if (expert_parallel < 1)
        throw JobError(0, "parallel.expert_parallel = " + std::to_string(expert_parallel) + " must be >= 1");
    if (world_size % expert_parallel != 0)
        throw JobError(0, "parallel.expert_parallel = " + std::to_string(expert_parallel) +
                              " does not divide the world size " + std::to_string(world_size) +
                        "; start a multiple of " + std::to_string(expert_parallel) +
                        " ranks or set parallel.expert_parallel to a divisor of " + std::to_string(world_size));
    const int rank = world->rank();
    ProcessGroups groups;
    groups.ep = world->split(rank / expert_parallel, rank);
    groups.expert_dp = world->split(rank % expert_parallel, rank);
    groups.world = std::move(world);
    return groups;
}

ProcessGroups make_process_groups(int expert_parallel) {
    return make_process_groups(MpiCommunicator::world(), expert_parallel);
}

}  // namespace moe
