#include "comm/process_groups.h"

#include <cstring>
#include <vector>

#include "comm/mpi_communicator.h"

namespace moe {

namespace {

// FNV-1a, 64 bits: a fingerprint to compare texts across ranks.
uint64_t fnv1a(const std::string& text) {
    uint64_t hash = 14695981039346656037ull;
    for (unsigned char c : text) {
        hash ^= c;
        hash *= 1099511628211ull;
    }
    return hash;
}

}  // namespace

ProcessGroups make_process_groups(std::unique_ptr<Communicator> world, int expert_parallel) {
    const int world_size = world->size();
    if (expert_parallel < 1)
        throw CommError("parallel.expert_parallel = " + std::to_string(expert_parallel) + " must be >= 1");
    if (world_size % expert_parallel != 0)
        throw CommError("parallel.expert_parallel = " + std::to_string(expert_parallel) +
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

void check_same_on_all_ranks(Communicator& world, const std::string& what, const std::string& text) {
    // The 64-bit hash travels as two I32 (the interface moves no 64-bit integers).
    const uint64_t hash = fnv1a(text);
    int32_t mine[2];
    std::memcpy(mine, &hash, sizeof hash);
    std::vector<int32_t> all(2 * size_t(world.size()));
    world.all_gather(mine, all.data(), 2, DType::I32);

    std::string differing;
    for (int r = 1; r < world.size(); ++r) {
        if (std::memcmp(&all[2 * size_t(r)], &all[0], sizeof hash) == 0) continue;
        differing += (differing.empty() ? "" : ", ") + std::to_string(r);
    }
    if (!differing.empty())
        throw CommError("ranks were started with different " + what + ": rank(s) " + differing +
                        " differ from rank 0; start every rank with the same " + what);
}

}  // namespace moe
