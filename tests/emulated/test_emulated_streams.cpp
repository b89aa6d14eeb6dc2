// The emulated GPU's streams do work in an order CUDA allows, and the orders
// that expose missing waits: without an event wait, another stream's work is
// not done yet (late) or is done too soon (early).
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>

#include "tests/catch.h"
#include "tests/emulated/emulated_streams.h"

namespace {

bool early_order() {
    const char* v = std::getenv("MOE_EMULATED_STREAMS");
    return v && !std::strcmp(v, "early");
}

struct Streams {
    cudaStream_t a = nullptr, b = nullptr;
    cudaEvent_t e = nullptr;
    Streams() {
        cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
        cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
        cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
    }
    ~Streams() {
        cudaDeviceSynchronize();
        cudaEventDestroy(e);
    }
};

}  // namespace

TEST_CASE("an event wait orders one stream's work after another's in either emulated order", "[gpu]") {
    Streams s;
    int x = 0, seen = -1;
    moe::emulated::enqueue(s.a, [&] { x = 1; });
    cudaEventRecord(s.e, s.a);
    cudaStreamWaitEvent(s.b, s.e, 0);
    moe::emulated::enqueue(s.b, [&] { seen = x; });
    cudaStreamSynchronize(s.b);
    CHECK(seen == 1);
    // A query of a busy stream says so, and the work is then done.
    moe::emulated::enqueue(s.a, [&] { x = 2; });
    CHECK(cudaStreamQuery(s.a) == cudaErrorNotReady);
    CHECK(x == 2);
    CHECK(cudaStreamQuery(s.a) == cudaSuccess);
}

TEST_CASE("without a wait, another stream's work is seen too late or too soon", "[gpu]") {
    Streams s;
    int x = 0, seen = -1;
    moe::emulated::enqueue(s.a, [&] { x = 1; });
    moe::emulated::enqueue(s.b, [&] { seen = x; });  // should have waited for a
    if (early_order()) {
        cudaStreamSynchronize(s.a);  // b runs ahead before a's work
        CHECK(x == 1);
        CHECK(seen == 0);
    } else {
        cudaStreamSynchronize(s.b);  // only b's work is done
        CHECK(seen == 0);
        CHECK(x == 0);
    }
}

TEST_CASE("emulated copies to pinned memory land at a synchronisation, to pageable memory at once", "[gpu]") {
    Streams s;
    void* device = nullptr;
    int* pinned = nullptr;
    cudaMalloc(&device, sizeof(int));
    cudaMallocHost(reinterpret_cast<void**>(&pinned), sizeof(int));
    const int value = 42;
    int pageable = 0;
    *pinned = 0;
    cudaMemcpyAsync(device, &value, sizeof value, cudaMemcpyHostToDevice, s.a);  // pageable source: taken now
    cudaMemcpyAsync(pinned, device, sizeof value, cudaMemcpyDeviceToHost, s.a);
    CHECK(*pinned == 0);
    cudaMemcpyAsync(&pageable, device, sizeof value, cudaMemcpyDeviceToHost, s.a);
    CHECK(pageable == 42);  // done when the call returns, after the stream's earlier work
    CHECK(*pinned == 42);
    cudaFreeHost(pinned);
    cudaFree(device);
}
