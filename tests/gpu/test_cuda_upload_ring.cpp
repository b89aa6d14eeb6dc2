// Host-to-device copies staged through the pinned upload ring: the host
// source is free at once, and nothing waits for the GPU.
#include <algorithm>

#include "tests/gpu/gpu_testing.h"

using namespace moe;
using namespace moe::test;

TEST_CASE("copy_from_host's source is free once it returns, through its staging ring and past it", "[gpu]") {
    Backends b;
    // Copies of many sizes, through the 16 MB pinned ring more than twice
    // over, and one larger than it; the host source is overwritten as soon
    // as each call returns.
    std::vector<int64_t> sizes;
    for (int i = 0; i < 30; ++i) sizes.push_back(i % 3 == 0 ? (1 << 20) + 7 * i : 1000 + 37 * i);
    sizes.push_back(5 << 20);
    // The destinations first: an allocation waits for the GPU, which would
    // let every copy finish before the next.
    std::vector<Tensor> dsts;
    for (int64_t size : sizes) dsts.push_back(b.zeros(DType::I32, {size}));
    std::vector<int32_t> src;
    for (size_t i = 0; i < sizes.size(); ++i) {
        src.assign(size_t(sizes[i]), int32_t(i));
        for (int64_t j = 0; j < sizes[i]; j += 4099) src[size_t(j)] = int32_t(j);
        b.gpu.copy_from_host(dsts[i], src.data());
        std::fill(src.begin(), src.end(), -1);
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
        INFO("copy " << i << " of " << sizes[i] << " ids");
        std::vector<int32_t> want(size_t(sizes[i]), int32_t(i));
        for (int64_t j = 0; j < sizes[i]; j += 4099) want[size_t(j)] = int32_t(j);
        REQUIRE(b.download_ids(dsts[i]) == want);
    }
}

TEST_CASE("copy_from_host queues its copy without waiting for the GPU", "[gpu]") {
    Backends b;
    // Behind a queue of large GEMMs (tens of ms), the call returns with the
    // GEMMs still running: it did not wait for them.
    const int64_t n = 8192;
    Tensor x = b.zeros(DType::BF16, {n, n}), w = b.zeros(DType::BF16, {n, n}), y = b.zeros(DType::BF16, {n, n});
    for (int i = 0; i < 20; ++i) b.gpu.matmul_forward(y, x, w, {});
    const std::vector<int32_t> ids(16384, 7);
    Tensor dst = b.zeros(DType::I32, {16384});
    b.gpu.copy_from_host(dst, ids.data());
    const cudaError_t state = cudaStreamQuery(b.gpu.stream());
    cudaGetLastError();  // cudaErrorNotReady is a state, not an error
    CHECK(state == cudaErrorNotReady);
    REQUIRE(b.download_ids(dst) == ids);
}
