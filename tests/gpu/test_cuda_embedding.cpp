// The CUDA embedding ops against the CPU reference: the forward gather for
// H = 20 (the element path) and 64 (16-byte chunks); the backward, adding and
// overwriting, with ids repeated many times (V = 5, N = 300) and over a
// skewed vocabulary with unused rows (V = 1000, N = 4096), on values whose
// sums are exact in fp32, so it must equal the CPU exactly; the same bits on
// every run for values whose sums round; and ids outside the table.
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "tests/catch.h"
#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

namespace {

// Multiples of 1/8 in [-4, 4]: bf16-exact, and every partial sum of a few
// thousand of them is a multiple of 1/8 below 2^21, exact in fp32, so any
// summation order gives the CPU's result.
std::vector<float> eighths(int64_t n, Rng& rng) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = float(std::floor(rng.uniform(-32, 33)) / 8);
    return v;
}

// N ids in [0, V), id = V u^skew: skew > 1 crowds them at the low ids (long
// runs) and leaves high ids unused.
std::vector<int32_t> random_ids(int64_t N, int64_t V, double skew, Rng& rng) {
    std::vector<int32_t> ids(static_cast<size_t>(N));
    for (int32_t& id : ids) id = int32_t(double(V) * std::pow(rng.uniform(), skew));
    return ids;
}

void check_forward(Backends& b, int64_t N, int64_t V, int64_t H) {
    INFO("N " << N << ", V " << V << ", H " << H);
    Rng rng(uint64_t(H), "cuda embedding forward");
    std::vector<float> table = bf16_normals(V * H, rng), out(size_t(N * H));
    std::vector<int32_t> ids = random_ids(N, V, 1, rng);
    b.cpu.embedding_forward(host_tensor(out, {N, H}), host_ids(ids, {N}), host_tensor(table, {V, H}));
    Tensor gpu_out = b.zeros(DType::BF16, {N, H});
    b.gpu.embedding_forward(gpu_out, b.upload_ids(ids, {N}), b.upload(table, DType::BF16, {V, H}));
    require_near("out", b.download(gpu_out), out, 0, 0);  // a copy: exact
}

void check_backward_exact(Backends& b, int64_t N, int64_t V, int64_t H, double skew, Write write) {
    INFO("N " << N << ", V " << V << ", H " << H << ", skew " << skew << (write == Write::add ? ", adding" : ", overwriting"));
    Rng rng(uint64_t(N + H), "cuda embedding backward");
    std::vector<int32_t> ids = random_ids(N, V, skew, rng);
    std::vector<float> dout = eighths(N * H, rng);
    // Nonzero: the op must add to it, or leave no trace of it (NaN included,
    // in the last row, which is unused where the ids are skewed).
    std::vector<float> start = eighths(V * H, rng);
    if (write == Write::overwrite) start[size_t(V * H - 1)] = NAN;
    std::vector<float> expected = start;
    b.cpu.embedding_backward(host_tensor(expected, {V, H}), host_ids(ids, {N}), host_tensor(dout, {N, H}), write);
    Tensor dtable = b.upload(start, DType::F32, {V, H});
    b.gpu.embedding_backward(dtable, b.upload_ids(ids, {N}), b.upload(dout, DType::BF16, {N, H}), write);
    require_near("dtable", b.download(dtable), expected, 0, 0);
}

}  // namespace

TEST_CASE("cuda embedding_forward gathers the CPU's rows", "[gpu]") {
    Backends b;
    for (int64_t H : {20, 64}) check_forward(b, 300, 50, H);
}

TEST_CASE("cuda embedding_backward equals the CPU on exact sums, repeated and unused ids", "[gpu]") {
    Backends b;
    for (Write write : {Write::add, Write::overwrite}) {
        for (int64_t H : {20, 64}) check_backward_exact(b, 300, 5, H, 1, write);
        check_backward_exact(b, 4096, 1000, 64, 3, write);
    }
}

TEST_CASE("cuda embedding_backward gives the same bits on every run", "[gpu]") {
    Backends b;
    const int64_t N = 300, V = 5, H = 64;
    Rng rng(7, "cuda embedding determinism");
    std::vector<int32_t> ids = random_ids(N, V, 1, rng);
    std::vector<float> dout = bf16_normals(N * H, rng);
    const std::vector<float> start = bf16_normals(V * H, rng);
    Tensor gpu_ids = b.upload_ids(ids, {N}), gpu_dout = b.upload(dout, DType::BF16, {N, H});
    Tensor first = b.upload(start, DType::F32, {V, H}), second = b.upload(start, DType::F32, {V, H});
    b.gpu.embedding_backward(first, gpu_ids, gpu_dout, Write::add);
    b.gpu.embedding_backward(second, gpu_ids, gpu_dout, Write::add);
    const std::vector<float> a = b.download(first), c = b.download(second);
    REQUIRE(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)) == 0);

    // Against the CPU's serial sum: each row adds ~60 unit normals; fp32
    // summation in two orders differs by at most ~60 * 2^-24 * sum |terms|
    // (~48) = 1.7e-4, typically far less.
    std::vector<float> expected = start;
    b.cpu.embedding_backward(host_tensor(expected, {V, H}), host_ids(ids, {N}), host_tensor(dout, {N, H}), Write::add);
    require_near("dtable", a, expected, 1e-5, 2e-4);
}

TEST_CASE("cuda embedding reads a bad id as a NaN row and adds nothing for it", "[gpu]") {
    Backends b;
    const int64_t N = 4, V = 3, H = 8;
    Rng rng(9, "cuda embedding bad ids");
    const std::vector<int32_t> ids = {0, int32_t(V), -1, 2};
    std::vector<float> table = eighths(V * H, rng), dout = eighths(N * H, rng);
    Tensor gpu_ids = b.upload_ids(ids, {N});

    Tensor out = b.zeros(DType::BF16, {N, H});
    b.gpu.embedding_forward(out, gpu_ids, b.upload(table, DType::BF16, {V, H}));
    const std::vector<float> rows = b.download(out);
    for (int64_t c = 0; c < H; ++c) {
        REQUIRE(rows[c] == table[c]);
        REQUIRE(std::isnan(rows[H + c]));
        REQUIRE(std::isnan(rows[2 * H + c]));
        REQUIRE(rows[3 * H + c] == table[2 * H + c]);
    }

    Tensor dtable = b.upload(table, DType::F32, {V, H});
    b.gpu.embedding_backward(dtable, gpu_ids, b.upload(dout, DType::BF16, {N, H}), Write::add);
    std::vector<float> expected = table;
    for (int64_t c = 0; c < H; ++c) {
        expected[c] += dout[c];
        expected[2 * H + c] += dout[3 * H + c];
    }
    require_near("dtable", b.download(dtable), expected, 0, 0);
}

TEST_CASE("cuda embedding rejects wrong dtypes and shapes", "[gpu]") {
    Backends b;
    const int64_t N = 4, V = 3, H = 8;
    Tensor ids = b.zeros(DType::I32, {N});
    REQUIRE_THROWS_AS(b.gpu.embedding_forward(b.zeros(DType::BF16, {N, H}), ids, b.zeros(DType::F32, {V, H})),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.embedding_forward(b.zeros(DType::BF16, {N, H + 1}), ids, b.zeros(DType::BF16, {V, H})),
                      std::invalid_argument);
    REQUIRE_THROWS_AS(
        b.gpu.embedding_backward(b.zeros(DType::BF16, {V, H}), ids, b.zeros(DType::BF16, {N, H}), Write::add),
        std::invalid_argument);
    REQUIRE_THROWS_AS(b.gpu.embedding_backward(b.zeros(DType::F32, {V, H}), b.zeros(DType::I32, {N + 1}),
                                               b.zeros(DType::BF16, {N, H}), Write::add),
                      std::invalid_argument);
}
