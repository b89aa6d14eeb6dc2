#include "comm/mpi_runtime.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>

#include "comm/communicator.h"

namespace moe {

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = MPI_THREAD_SINGLE;
        mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        owns_ = true;
        if (provided < MPI_THREAD_FUNNELED) {
            MPI_Finalize();
            throw CommError("MPI provides no MPI_THREAD_FUNNELED support; use an MPI library built with threads");
        }
    }
    mpi_check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
}

MpiRuntime::~MpiRuntime() {
    if (!owns_ || !mpi_running()) return;
    if (std::uncaught_exceptions() > 0 && world_size() > 1) abort_all(EXIT_FAILURE);
    MPI_Finalize();
}

int MpiRuntime::world_rank() const {
    int rank = 0;
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
    return rank;
}

int MpiRuntime::world_size() const {
    int size = 1;
    mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
    return size;
}

bool mpi_running() {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    return initialized && !finalized;
}

void abort_all(int code) {
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    if (mpi_running()) MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
}

std::string mpi_error_string(int rc) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS || length <= 0) return "MPI error " + std::to_string(rc);
    return std::string(text, size_t(length));
}

void mpi_check(int rc, const char* call) {
    if (rc != MPI_SUCCESS) throw CommError(std::string(call) + " failed: " + mpi_error_string(rc));
}

}  // namespace moe
