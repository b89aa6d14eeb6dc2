// The CPU token embedding (cpu/embedding.cpp): rows gathered by id, and the
// backward's scatter-add of repeated ids, against naive loops.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "tests/op_testing.h"

using namespace moe;
using namespace moe::test;

TEST_CASE("embedding gathers rows and scatter-adds repeated ids", "[unit]") {
    CpuOps ops;
    Rng rng(4, "embedding");
    const int V = 5, H = 3, N = 6;
    std::vector<int32_t> ids = {4, 0, 4, 2, 4, 1};
    const Tensor id_t(ids.data(), DType::I32, {N});
    std::vector<double> table = normals(V * H, rng), out(N * H);
    ops.embedding_forward(tensor(out, {N, H}), id_t, tensor(table, {V, H}));
    for (int n = 0; n < N; ++n)
        for (int i = 0; i < H; ++i) REQUIRE(out[n * H + i] == table[ids[n] * H + i]);

    std::vector<double> dout = normals(N * H, rng), before = normals(V * H, rng), dtable = before;
    ops.embedding_backward(tensor(dtable, {V, H}), id_t, tensor(dout, {N, H}), Write::add);
    std::vector<double> expected = before;
    for (int n = 0; n < N; ++n)
        for (int i = 0; i < H; ++i) expected[ids[n] * H + i] += dout[n * H + i];
    require_close("dtable", dtable, expected, 1e-15);  // row 3 has no token and keeps its value

    // Overwritten: the sums alone, row 3 zero.
    ops.embedding_backward(tensor(dtable, {V, H}), id_t, tensor(dout, {N, H}), Write::overwrite);
    for (int v = 0; v < V; ++v)
        for (int i = 0; i < H; ++i) expected[v * H + i] -= before[v * H + i];
    require_close("dtable", dtable, expected, 1e-15);
    for (int i = 0; i < H; ++i) REQUIRE(dtable[3 * H + i] == 0);

    ids[2] = V;
    const std::string message =
        error_of<std::out_of_range>([&] { ops.embedding_forward(tensor(out, {N, H}), id_t, tensor(table, {V, H})); });
    REQUIRE(contains(message, "embedding_forward: id[2] = 5"));
}
