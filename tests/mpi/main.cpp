// Test runner for the tests that run on several ranks under mpiexec (label
// mpi), or as a world of one without it. Every rank runs every test case, so
// the collectives inside a test case have all ranks taking part.
#if MOE_CATCH2_V3
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <cstdio>
#include <cstdlib>

#include "comm/mpi_runtime.h"
#if MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

int main(int argc, char** argv) {
    // The GPU runs of these programs (ctest label gpu) are skipped, exit 77,
    // where no GPU is visible.
    if (std::getenv("MOE_NEEDS_GPU")) {
#if MOE_HAVE_CUDA
        const bool gpu = moe::cuda_device_count() > 0;
#else
        const bool gpu = false;
#endif
        if (!gpu) {
            std::printf("skipped: no CUDA GPU visible to this process (this run needs one)\n");
            return 77;
        }
    }
    moe::MpiRuntime mpi(&argc, &argv);
    const int failures = Catch::Session().run(argc, argv);
    if (failures != 0) std::fprintf(stderr, "rank %d of %d: tests failed\n", mpi.world_rank(), mpi.world_size());
    return failures;
}
