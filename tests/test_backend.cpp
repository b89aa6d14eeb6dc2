// The run's backend (run/backend): the CPU's thread count is checked against
// the cores there before any thread is started.
#include <omp.h>

#include <string>

#include "engine/run/backend.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#if MOE_HAVE_CUDA
#include <stdexcept>

#include "kernels/cuda/cuda_ops.h"
#endif

using namespace moe;

#if MOE_HAVE_CUDA
TEST_CASE("MOE_CUDA_ATTENTION chooses the attention kernels or names the choices", "[unit]") {
    REQUIRE(attention_wgmma_choice(nullptr, true));  // unset: wgmma where the GPU has it
    REQUIRE_FALSE(attention_wgmma_choice(nullptr, false));
    REQUIRE(attention_wgmma_choice("", true));
    REQUIRE_FALSE(attention_wgmma_choice("mma_sync", true));
    REQUIRE(attention_wgmma_choice("wgmma", true));
    REQUIRE(test::error_of<std::runtime_error>([] { attention_wgmma_choice("wgmma", false); }) ==
            "MOE_CUDA_ATTENTION=wgmma, but this GPU or build has no wgmma (it needs a compute 9.0 GPU and sm_90a in "
            "CMAKE_CUDA_ARCHITECTURES): unset it to use mma.sync");
    REQUIRE(test::error_of<std::invalid_argument>([] { attention_wgmma_choice("WGMMA", true); }) ==
            "MOE_CUDA_ATTENTION=WGMMA is not a choice: wgmma, mma_sync, or unset for wgmma where the GPU has it");
}

TEST_CASE("MOE_CUDA_EXPERT_STREAMS sets the side streams or names the range", "[unit]") {
    REQUIRE(expert_streams_choice(nullptr) == CudaOps::kExpertLanes);
    for (int n = 0; n <= CudaOps::kExpertLanes; ++n) REQUIRE(expert_streams_choice(std::to_string(n).c_str()) == n);
    for (const char* bad : {"", "5", "-1", "2x", "four"})
        REQUIRE(test::error_of<std::invalid_argument>([&] { expert_streams_choice(bad); }) ==
                "MOE_CUDA_EXPERT_STREAMS=" + std::string(bad) +
                    " is not a count of side streams from 0 to 4 (0: experts' GEMMs on the main stream; unset: 4)");
}

TEST_CASE("MOE_CUDA_ATTENTION_HEADS sets the query heads an attention block takes or names the choices", "[unit]") {
    REQUIRE(attention_heads_choice(nullptr) == CudaOps::kMaxAttentionHeads);
    for (int n : {1, 2, 4}) REQUIRE(attention_heads_choice(std::to_string(n).c_str()) == n);
    for (const char* bad : {"", "0", "3", "8", "4x", "two"})
        REQUIRE(test::error_of<std::invalid_argument>([&] { attention_heads_choice(bad); }) ==
                "MOE_CUDA_ATTENTION_HEADS=" + std::string(bad) +
                    " is not a choice: 1, 2 or 4 query heads a block at most (unset: 4)");
}
#endif

TEST_CASE("run.threads beyond the cores here is refused with the count to use", "[unit]") {
    RunConfig run;
    const int cores = omp_get_num_procs();
    run.threads = cores + 1;
    const std::string message = test::error_of<ConfigError>([&] { make_backend(run, nullptr); });
    REQUIRE(message == "config: run.threads is " + std::to_string(cores + 1) + " but this machine has " +
                           std::to_string(cores) + " cores: more threads than cores only slow the run; set "
                           "run.threads to at most " + std::to_string(cores) + ", or 0 for every core");
    run.threads = cores;
    REQUIRE(make_backend(run, nullptr)->device() == Device::CPU);
    REQUIRE(omp_get_max_threads() == cores);
}
