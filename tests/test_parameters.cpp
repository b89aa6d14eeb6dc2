// A fused parameter's parts (blocks of rows of unequal sizes, as attention's
// stacked q, k and v projections): files see each part under its own name and
// shape, initialised from its own stream as a separate parameter would be,
// and parts that do not add up to the rows are refused.
#include <string>
#include <vector>

#include "engine/params/parameters.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int64_t H = 3;

// Each file tensor's values by name (the CPU's fp32 masters).
std::vector<std::pair<std::string, std::vector<float>>> values(const ParameterSet& set) {
    std::vector<std::pair<std::string, std::vector<float>>> out;
    for (const NamedTensor& t : set.named(ParameterSet::Slot::Value)) {
        const float* p = t.tensor.ptr<float>();
        out.push_back({t.name, std::vector<float>(p, p + t.tensor.numel())});
    }
    return out;
}

}  // namespace

TEST_CASE("a fused parameter's parts of unequal rows are files of their own, as separate parameters", "[unit]") {
    CpuOps ops;
    ParameterSet fused, separate;
    fused.add("attn.wqkv", {4 + 1 + 1, H}, InitSpec::normal(0.02), true, -1,
              {{"attn.wq", 4}, {"attn.wk", 1}, {"attn.wv", 1}});
    separate.add("attn.wq", {4, H}, InitSpec::normal(0.02), true);
    separate.add("attn.wk", {1, H}, InitSpec::normal(0.02), true);
    separate.add("attn.wv", {1, H}, InitSpec::normal(0.02), true);
    REQUIRE(fused.names() == std::vector<std::string>{"attn.wq", "attn.wk", "attn.wv"});
    for (ParameterSet* set : {&fused, &separate}) {
        set->allocate(ops, ops.training_precision());
        set->initialize(11);
    }
    const auto got = values(fused);
    REQUIRE(got == values(separate));
    REQUIRE(got[0].second.size() == 4 * H);
    REQUIRE(got[1].second.size() == H);
    // The parts are consecutive rows of the one tensor: wk is row 4.
    const Param& wqkv = fused.find("attn.wqkv");
    const float* rows = wqkv.value.ptr<float>();
    REQUIRE(std::vector<float>(rows + 4 * H, rows + 5 * H) == got[1].second);
}

TEST_CASE("a fused parameter's parts must be positive and add up to its rows", "[unit]") {
    for (const std::vector<ParamPart>& parts : std::vector<std::vector<ParamPart>>{
             {{"a", 4}, {"b", 1}}, {{"a", 6}, {"b", 0}}, {{"a", 7}, {"b", -1}}}) {
        ParameterSet set;
        const std::string message =
            error_of<std::logic_error>([&] { set.add("ab", {6, H}, InitSpec::normal(1), true, -1, parts); });
        REQUIRE(contains(message, "parameter ab: its parts' rows must be positive and add up to its rows"));
    }
}
