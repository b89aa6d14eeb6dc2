// MPI's lifetime in a process, and how MPI failures surface: as CommError
// exceptions, or as an abort of every rank when one rank cannot go on.
#pragma once
#include <string>

namespace moe {

// Initializes MPI on construction and finalizes it on destruction; if MPI is
// already initialized it does neither, so nesting is harmless. Started without
// mpirun, the process is a world of one. MPI_COMM_WORLD returns errors instead
// of aborting, so they surface as CommError. Only the main thread calls MPI.
class MpiRuntime {
public:
    MpiRuntime(int* argc, char*** argv);
    MpiRuntime() : MpiRuntime(nullptr, nullptr) {}
    // An exception leaving the runtime's scope in a world of several ranks
    // aborts them all: finalizing would wait forever for ranks blocked in a
    // collective.
    ~MpiRuntime();
    MpiRuntime(const MpiRuntime&) = delete;
    MpiRuntime& operator=(const MpiRuntime&) = delete;

    int world_rank() const;
    int world_size() const;

private:
    bool owns_ = false;
};

// True between MPI_Init and MPI_Finalize.
bool mpi_running();

// Stops every rank of the job with exit code `code` (mpirun then exits with a
// non-zero code instead of leaving the others waiting). For a fatal error that
// other ranks may not share; works without MPI too.
[[noreturn]] void abort_all(int code);

// MPI's description of an error code, e.g. "MPI_ERR_ROOT: invalid root".
std::string mpi_error_string(int rc);

// Throws CommError "<call> failed: <MPI's error string>" unless rc is MPI_SUCCESS.
void mpi_check(int rc, const char* call);

}  // namespace moe
