// The layout report and the shared-GPU check, from given rank places.
#include <algorithm>
#include <string>
#include <vector>

#include "engine/run/layout_report.h"
#include "tests/catch.h"
#include "tests/test_util.h"

using namespace moe;
using moe::test::contains;

TEST_CASE("the layout report lists nodes, devices and both kinds of groups", "[unit]") {
    const std::vector<RankPlace> places = {
        {"node-a", "cuda:0"}, {"node-a", "cuda:1"}, {"node-b", "cuda:0"}, {"node-b", "cuda:1"}};
    const std::string report = layout_report(places, 2, 4);
    CHECK(report ==
          "layout: 4 ranks on 2 node(s), expert parallel 2 x data parallel 2, 4 experts per rank\n"
          "  node node-a: ranks 0 1 on cuda:0 cuda:1\n"
          "  node node-b: ranks 2 3 on cuda:0 cuda:1\n"
          "  EP groups (exchange tokens): [0 1] [2 3]\n"
          "  expert-DP groups (average expert gradients): [0 2] [1 3]");
    CHECK(shared_gpu_problem(places).empty());
}

TEST_CASE("a large job's report stays short", "[unit]") {
    std::vector<RankPlace> places;
    for (int r = 0; r < 256; ++r) places.push_back({"n" + std::to_string(r / 8), "cuda:" + std::to_string(r % 8)});
    const std::string report = layout_report(places, 8, 1);
    CHECK(contains(report, "256 ranks on 32 node(s), expert parallel 8 x data parallel 32"));
    CHECK(contains(report, "node n0: ranks 0-7 on cuda:0"));
    CHECK(contains(report, "... 16 more nodes"));
    CHECK(std::count(report.begin(), report.end(), '\n') < 24);
}

TEST_CASE("two ranks of a node on one GPU are named, CPU ranks may share a node", "[unit]") {
    CHECK(shared_gpu_problem({{"a", "cpu"}, {"a", "cpu"}}).empty());
    CHECK(shared_gpu_problem({{"a", "cuda:0"}, {"b", "cuda:0"}}).empty());
    const std::string problem = shared_gpu_problem({{"a", "cuda:0"}, {"a", "cuda:1"}, {"a", "cuda:0"}});
    CHECK(contains(problem, "ranks 0 and 2 would share cuda:0 on node a"));
    CHECK(contains(problem, "parallel.allow_shared_gpu=true"));
}
