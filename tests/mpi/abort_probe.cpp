// A job in which rank 1 fails while the other ranks wait in a barrier, run by
// the mpi tests to show that the whole job stops promptly with an error
// instead of hanging. Modes:
//   abort   rank 1 throws; main catches it and calls abort_all(3)   (exit 3)
//   unwind  rank 1's exception leaves the MpiRuntime's scope          (exit 1)
//   die     rank 1 is killed by SIGKILL                               (non-zero)
#include <csignal>
#include <cstring>
#include <iostream>

#include "comm/mpi_communicator.h"
#include "comm/mpi_runtime.h"

namespace {

void fail_on_rank_one(const char* mode) {
    auto world = moe::MpiCommunicator::world();
    if (world->rank() == 1) {
        if (std::strcmp(mode, "die") == 0) std::raise(SIGKILL);
        throw moe::CommError(std::string("rank 1 fails on purpose (") + mode + ")");
    }
    world->barrier();
    std::cout << "rank " << world->rank() << " passed the barrier: rank 1 did not stop the job\n";
}

}  // namespace

int main(int argc, char** argv) {
    const char* mode = argc > 1 ? argv[1] : "abort";
    if (std::strcmp(mode, "unwind") == 0) {
        try {
            moe::MpiRuntime mpi(&argc, &argv);
            fail_on_rank_one(mode);
        } catch (const std::exception& e) {
            std::cerr << e.what() << "\n";
        }
        return 0;
    }
    moe::MpiRuntime mpi(&argc, &argv);
    try {
        fail_on_rank_one(mode);
    } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        moe::abort_all(3);
    }
    return 0;
}
