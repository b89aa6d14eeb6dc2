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

#include "comm/mpi_runtime.h"

int main(int argc, char** argv) {
    moe::MpiRuntime mpi(&argc, &argv);
    const int failures = Catch::Session().run(argc, argv);
    if (failures != 0) std::fprintf(stderr, "rank %d of %d: tests failed\n", mpi.world_rank(), mpi.world_size());
    return failures;
}
