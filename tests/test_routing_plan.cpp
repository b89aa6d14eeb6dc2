#include "kernels/routing_plan.h"
#include "tests/catch.h"

using namespace moe;

TEST_CASE("routing plan keeps token order within each expert", "[unit]") {
    // 4 tokens, top-2, 3 experts.
    const int32_t experts[] = {0, 2, 2, 1, 0, 2, 1, 0};
    RoutingPlan p = build_routing_plan(experts, 4, 2, 3, std::nullopt);
    REQUIRE(p.offsets == std::vector<int64_t>{0, 3, 5, 8});
    REQUIRE(p.row_token == std::vector<int32_t>{0, 2, 3, 1, 3, 0, 1, 2});
    REQUIRE(p.slot_row == std::vector<int32_t>{0, 5, 6, 3, 1, 7, 4, 2});
    REQUIRE(p.total_dropped() == 0);
}

TEST_CASE("routing plan drops slots past capacity in token order", "[unit]") {
    // capacity ceil(0.5 * 4 * 2 / 3) = 2: expert 0 keeps tokens 0, 2 and drops 3;
    // expert 2 keeps tokens 0, 1 and drops 2.
    const int32_t experts[] = {0, 2, 2, 1, 0, 2, 1, 0};
    RoutingPlan p = build_routing_plan(experts, 4, 2, 3, 0.5);
    REQUIRE(p.capacity == 2);
    REQUIRE(p.offsets == std::vector<int64_t>{0, 2, 4, 6});
    REQUIRE(p.dropped == std::vector<int64_t>{1, 0, 1});
    REQUIRE(p.slot_row[7] == -1);  // token 3 -> expert 0, third in line
    REQUIRE(p.slot_row[5] == -1);  // token 2 -> expert 2, third in line
    REQUIRE(p.routed(0) == 3);
    for (int e = 0; e < 3; ++e) REQUIRE(p.offsets[e + 1] - p.offsets[e] <= p.capacity);
}

TEST_CASE("routing plan rejects an expert index out of range", "[unit]") {
    const int32_t experts[] = {0, 3};
    REQUIRE_THROWS(build_routing_plan(experts, 2, 1, 3, std::nullopt));
}
