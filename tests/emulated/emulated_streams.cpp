// The emulated GPU's streams and events (emulated_streams.h), and the CUDA
// runtime's stream and event functions over them.
#include "tests/emulated/emulated_streams.h"

#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// The runtime's opaque handle types, defined here.
struct CUstream_st {
    bool blocking = false;  // orders with the legacy default stream
    struct Item {
        std::function<void()> work;  // or, when empty, a wait:
        CUstream_st* after = nullptr;
        long until = 0;  // ... until `after` has done this many items
    };
    std::deque<Item> queue;
    long done = 0, queued = 0;  // items done, items ever queued
};
struct CUevent_st {
    CUstream_st* stream = nullptr;  // none: never recorded, so complete
    long position = 0;              // complete once `stream` has done this many items
};

namespace moe::emulated {

namespace {

CUstream_st legacy{true};
std::vector<std::unique_ptr<CUstream_st>>& streams() {
    static std::vector<std::unique_ptr<CUstream_st>> all;
    return all;
}
CUstream_st& stream_of(cudaStream_t s) { return s ? *s : legacy; }

void wait_in(CUstream_st& s, CUstream_st& after) {
    if (after.done < after.queued) s.queue.push_back({{}, &after, after.queued}), ++s.queued;
}

void push(CUstream_st& s, std::function<void()> work) {
    // The legacy stream and the blocking streams wait for each other.
    if (&s == &legacy) {
        for (const auto& other : streams())
            if (other->blocking) wait_in(s, *other);
    } else if (s.blocking) {
        wait_in(s, legacy);
    }
    s.queue.push_back({std::move(work), nullptr, 0});
    ++s.queued;
}

bool early() {
    static const bool is_early = [] {
        const char* v = std::getenv("MOE_EMULATED_STREAMS");
        if (!v || !std::strcmp(v, "late")) return false;
        if (!std::strcmp(v, "early")) return true;
        throw std::invalid_argument(std::string("MOE_EMULATED_STREAMS is '") + v + "': set late or early, or unset it");
    }();
    return is_early;
}

// Does s's items while none waits for work not done.
void run_ahead(CUstream_st& s) {
    while (!s.queue.empty() && (s.queue.front().work || s.queue.front().after->done >= s.queue.front().until)) {
        CUstream_st::Item item = std::move(s.queue.front());
        s.queue.pop_front();
        if (item.work) item.work();
        ++s.done;
    }
}

// Does s's items until it has done `until` of them.
void finish(CUstream_st& s, long until) {
    if (early() && s.done < until) {
        if (&s != &legacy) run_ahead(legacy);
        for (const auto& other : streams())
            if (other.get() != &s) run_ahead(*other);
    }
    while (s.done < until) {
        CUstream_st::Item item = std::move(s.queue.front());
        s.queue.pop_front();
        if (item.work)
            item.work();
        else
            finish(*item.after, item.until);
        ++s.done;
    }
}

}  // namespace

void enqueue(cudaStream_t s, std::function<void()> work) { push(stream_of(s), std::move(work)); }
void finish_stream(cudaStream_t s) { finish(stream_of(s), stream_of(s).queued); }
void finish_all() {
    finish(legacy, legacy.queued);
    for (const auto& s : streams()) finish(*s, s->queued);
}
bool stream_busy(cudaStream_t s) { return stream_of(s).done < stream_of(s).queued; }

}  // namespace moe::emulated

using moe::emulated::finish;
using moe::emulated::stream_of;

extern "C" {

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
    auto& all = moe::emulated::streams();
    all.push_back(std::make_unique<CUstream_st>());
    all.back()->blocking = !(flags & cudaStreamNonBlocking);
    *s = all.back().get();
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    // Its queued work is still done (CUDA's promise); the handle stays.
    moe::emulated::finish_stream(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    moe::emulated::finish_stream(s);
    return cudaSuccess;
}
// Not ready while work is queued; the work is then done, so that a host
// polling it goes on.
cudaError_t cudaStreamQuery(cudaStream_t s) {
    if (!moe::emulated::stream_busy(s)) return cudaSuccess;
    moe::emulated::finish_stream(s);
    return cudaErrorNotReady;
}
cudaError_t cudaDeviceSynchronize() {
    moe::emulated::finish_all();
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
    *e = new CUevent_st;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    e->stream = &stream_of(s);
    e->position = e->stream->queued;
    return cudaSuccess;
}
// The wait is for the event's last record before this call, as CUDA's.
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
    CUstream_st& waiter = stream_of(s);
    if (e->stream && e->stream->done < e->position) {
        waiter.queue.push_back({{}, e->stream, e->position});
        ++waiter.queued;
    }
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (e->stream) finish(*e->stream, e->position);
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
    if (!e->stream || e->stream->done >= e->position) return cudaSuccess;
    finish(*e->stream, e->position);
    return cudaErrorNotReady;
}

}  // extern "C"
