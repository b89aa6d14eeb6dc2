// Test runner for the GPU tests (label gpu): without a visible CUDA GPU it
// says so on one line and exits 77, which ctest reports as skipped. MPI runs
// (a world of one) for the communicator tests.
#if MOE_CATCH2_V3
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <cstdio>

#include "comm/mpi_runtime.h"
#include "kernels/cuda/cuda_ops.h"

int main(int argc, char** argv) {
    if (moe::cuda_device_count() == 0) {
        std::printf("skipped: no CUDA GPU visible to this process (the gpu tests need one)\n");
        return 77;
    }
    moe::MpiRuntime mpi(&argc, &argv);
    return Catch::Session().run(argc, argv);
}
