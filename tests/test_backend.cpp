// The run's backend (run/backend): the CPU's thread count is checked against
// the cores there before any thread is started.
#include <omp.h>

#include <string>

#include "engine/run/backend.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;

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
