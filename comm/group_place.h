// A rank's place in a process group: the group's size, the rank's index in
// it, and the communicator over it, which is null when the group is only
// planned (the memory of a rank of a layout, with no process to talk to).
#pragma once
#include "comm/communicator.h"

namespace moe {

struct GroupPlace {
    Communicator* comm = nullptr;
    int size = 1, rank = 0;

    GroupPlace() = default;
    // The place in a real group (null: a group of one).
    GroupPlace(Communicator* group)  // NOLINT: implicit, a group gives the place in it
        : comm(group), size(group ? group->size() : 1), rank(group ? group->rank() : 0) {}
    // A rank of a group of `size` that is only planned: nothing moves.
    static GroupPlace planned(int size, int rank) {
        GroupPlace p;
        p.size = size;
        p.rank = rank;
        return p;
    }
};

}  // namespace moe
