// The fused projection's output on the CPU: split_qkv puts each position's
// heads where q, k and v keep them, join_qkv puts them back, and wrong shapes
// are named.
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

constexpr int64_t B = 2, T = 3, NH = 4, NKV = 2, HD = 6, G = NH + 2 * NKV;

// Element (b, t, head, i) of a [B,T,heads,HD] tensor.
int64_t at(int64_t b, int64_t t, int64_t heads, int64_t h, int64_t i) { return ((b * T + t) * heads + h) * HD + i; }

template <class F> void check_split_and_join() {
    CpuOps ops;
    Rng rng(3, "qkv split");
    std::vector<F> qkv = cast<F>(normals(B * T * G * HD, rng));
    std::vector<F> q(B * T * NH * HD), k(B * T * NKV * HD), v(k.size());
    ops.split_qkv(tensor(q, {B, T, NH, HD}), tensor(k, {B, T, NKV, HD}), tensor(v, {B, T, NKV, HD}),
                  tensor(qkv, {B, T, G, HD}));
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < HD; ++i) {
                for (int64_t h = 0; h < NH; ++h) REQUIRE(q[at(b, t, NH, h, i)] == qkv[at(b, t, G, h, i)]);
                for (int64_t h = 0; h < NKV; ++h) {
                    REQUIRE(k[at(b, t, NKV, h, i)] == qkv[at(b, t, G, NH + h, i)]);
                    REQUIRE(v[at(b, t, NKV, h, i)] == qkv[at(b, t, G, NH + NKV + h, i)]);
                }
            }
    std::vector<F> joined(qkv.size(), F(7));
    ops.join_qkv(tensor(joined, {B, T, G, HD}), tensor(q, {B, T, NH, HD}), tensor(k, {B, T, NKV, HD}),
                 tensor(v, {B, T, NKV, HD}));
    REQUIRE(joined == qkv);
}

}  // namespace

TEST_CASE("split_qkv copies each position's q, k and v heads out, join_qkv puts them back", "[unit]") {
    check_split_and_join<float>();
    check_split_and_join<double>();
}

TEST_CASE("split_qkv and join_qkv name shapes that do not fit", "[unit]") {
    CpuOps ops;
    std::vector<float> qkv(B * T * G * HD), q(B * T * NH * HD), k(B * T * NKV * HD), v(k.size());
    require_logic_error(
        [&] {
            ops.split_qkv(tensor(q, {B, T, NH, HD}), tensor(k, {B, T, NKV, HD}), tensor(v, {B, T, NKV, HD}),
                          tensor(qkv, {B, T, G - 1, HD + 1}));
        },
        {"split_qkv", "qkv [2, 3, 7, 7]", "q [2, 3, 4, 6]"});
    require_logic_error(
        [&] {
            ops.join_qkv(tensor(qkv, {B, T, G, HD}), tensor(q, {B, T, NH, HD}), tensor(k, {B, T, NKV, HD}),
                         tensor(v, {B * T, NKV, HD}));
        },
        {"join_qkv", "v [6, 2, 6]"});
    std::vector<double> wide(q.size());
    require_logic_error(
        [&] {
            ops.join_qkv(tensor(qkv, {B, T, G, HD}), tensor(wide, {B, T, NH, HD}), tensor(k, {B, T, NKV, HD}),
                         tensor(v, {B, T, NKV, HD}));
        },
        {"join_qkv", "share a dtype"});
}
