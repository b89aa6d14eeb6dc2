// Streams and events of the emulated GPU. Work is queued on its stream and
// done only when the host must see it (a stream or event synchronisation,
// a copy to pageable memory, a query, a free), in one of two orders that
// CUDA allows (MOE_EMULATED_STREAMS):
// - late (the default): only the work asked for, and what it waits for
//   through events. Work a stream reads without waiting for it is not done
//   yet: a missing cudaStreamWaitEvent at a join, a read of pinned memory
//   before its copy is synchronised, or pinned memory rewritten under a
//   queued copy gives wrong values in the gpu tests, as it may on a GPU.
// - early: every other stream first runs ahead as far as its own waits
//   let it, before the work asked for: work that should have waited for
//   an earlier kernel of another stream (a missing wait at a fork) runs
//   before that kernel.
// The legacy default stream (0) orders with blocking streams only, as
// CUDA's does: the backend's streams are non-blocking.
#pragma once
#include <cuda_runtime_api.h>

#include <functional>

namespace moe::emulated {

// Queues `work` on stream s (0: the legacy default stream).
void enqueue(cudaStream_t s, std::function<void()> work);
// Does the work queued on s so far, and what it waits for.
void finish_stream(cudaStream_t s);
// Does the work queued on every stream so far.
void finish_all();
// Whether s has work not yet done.
bool stream_busy(cudaStream_t s);

}  // namespace moe::emulated
