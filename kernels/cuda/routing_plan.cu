// The routing plan on the GPU: build_routing_plan (kernels/routing_plan.h)
// for top-k indices that never leave the device; only the counts per expert
// come back, with one wait, because the expert GEMMs are sized on the host.
//
// The slots are cut into chunks of kChunk. Three launches:
//  1. count: the slots of each (expert, chunk), one thread per slot (integer
//     atomics: a count does not depend on their order);
//  2. scan, one block: each count becomes the chunk's first place in its
//     expert, then kept / dropped per expert and the experts' row offsets;
//  3. place: one warp walks a chunk in slot order, 32 slots at a time, and
//     ranks the lanes that chose the same expert with __match_any_sync, so a
//     slot's place in its expert is its place in token order, as in the
//     serial plan, and capacity drops the same slots.
#include <string>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::require_dtype;

constexpr int kChunk = 256;         // slots per chunk
constexpr int kCountThreads = 256;
constexpr int kScanThreads = 1024;  // one warp per expert at a time
constexpr int kPlaceWarps = 8;      // chunks per block of the place kernel
constexpr unsigned kFullMask = 0xffffffffu;

// counts[e * chunks + c] += slots of chunk c that chose e; bad: the lowest
// slot naming an expert outside [0, E) (starts at UINT_MAX).
__global__ void count_kernel(int32_t* counts, unsigned* bad, const int32_t* expert_of_slot, int64_t slots, int E,
                             int64_t chunks) {
    for (int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; s < slots; s += int64_t(gridDim.x) * blockDim.x) {
        const int32_t e = expert_of_slot[s];
        if (e < 0 || e >= E)
            atomicMin(bad, unsigned(s));
        else
            atomicAdd(&counts[e * chunks + s / kChunk], 1);
    }
}

// Inclusive prefix sum over the warp's lanes.
__device__ __forceinline__ int64_t warp_inclusive_scan(int64_t x) {
    const int lane = threadIdx.x & 31;
    for (int o = 1; o < 32; o <<= 1) {
        const int64_t y = __shfl_up_sync(kFullMask, x, o);
        if (lane >= o) x += y;
    }
    return x;
}

// counts -> each chunk's first place in its expert (in place); result[e] =
// kept, result[E + e] = dropped, result[2E] = the bad slot or -1; offsets[E+1]
// of the kept rows.
__global__ void scan_kernel(int32_t* counts, int64_t* result, int64_t* offsets, const unsigned* bad, int E,
                            int64_t chunks, int64_t capacity) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int e = warp; e < E; e += warps) {
        int32_t* row = counts + int64_t(e) * chunks;
        int64_t total = 0;
        for (int64_t c0 = 0; c0 < chunks; c0 += 32) {
            const int64_t c = c0 + lane;
            const int64_t n = c < chunks ? row[c] : 0;
            const int64_t incl = warp_inclusive_scan(n);
            if (c < chunks) row[c] = int32_t(total + incl - n);
            total += __shfl_sync(kFullMask, incl, 31);
        }
        if (lane == 0) {
            const int64_t kept = capacity >= 0 && total > capacity ? capacity : total;
            result[e] = kept;
            result[E + e] = total - kept;
        }
    }
    __syncthreads();
    if (warp == 0) {
        int64_t start = 0;
        for (int e0 = 0; e0 < E; e0 += 32) {
            const int e = e0 + lane;
            const int64_t n = e < E ? result[e] : 0;
            const int64_t incl = warp_inclusive_scan(n);
            if (e < E) offsets[e] = start + incl - n;
            start += __shfl_sync(kFullMask, incl, 31);
        }
        if (lane == 0) {
            offsets[E] = start;
            result[2 * E] = *bad == 0xffffffffu ? -1 : int64_t(*bad);
        }
    }
}

// Warp w of block b walks chunk c = b * kPlaceWarps + w; places[e * chunks + c]
// (the chunk's next place in e) is this warp's alone.
__global__ void place_kernel(int32_t* slot_row, int32_t* row_token, int32_t* places, const int64_t* offsets,
                             const int32_t* expert_of_slot, int64_t slots, int E, int k, int64_t chunks,
                             int64_t capacity) {
    const int lane = threadIdx.x & 31;
    const int64_t c = int64_t(blockIdx.x) * kPlaceWarps + (threadIdx.x >> 5);
    if (c >= chunks) return;
    const int64_t end = min(slots, (c + 1) * kChunk);
    for (int64_t s0 = c * kChunk; s0 < end; s0 += 32) {
        const int64_t s = s0 + lane;
        const unsigned live = __ballot_sync(kFullMask, s < end);
        if (s >= end) break;
        const int32_t e = expert_of_slot[s];
        const bool valid = e >= 0 && e < E;  // a bad slot is reported by the host
        const unsigned peers = __match_any_sync(live, valid ? e : -1);
        const int before = __popc(peers & ((1u << lane) - 1u));
        int32_t* next = valid ? places + int64_t(e) * chunks + c : nullptr;
        const int64_t place = valid ? *next + before : 0;
        __syncwarp(live);  // every peer has read *next
        if (valid && before == __popc(peers) - 1) *next += __popc(peers);
        __syncwarp(live);
        if (!valid) continue;
        if (capacity >= 0 && place >= capacity) {
            slot_row[s] = -1;
        } else {
            const int64_t r = offsets[e] + place;
            slot_row[s] = int32_t(r);
            row_token[r] = int32_t(s / k);
        }
    }
}

}  // namespace

RoutingCounts CudaOps::plan_routing(Tensor slot_row, Tensor row_token, Tensor expert_of_slot, int num_experts,
                                    std::optional<double> capacity_factor) {
    const char* op = "plan_routing";
    require_dtype(op, "slot_row", slot_row, DType::I32);
    require_dtype(op, "row_token", row_token, DType::I32);
    require_dtype(op, "expert_of_slot", expert_of_slot, DType::I32);
    const int64_t N = expert_of_slot.dim(0), k = expert_of_slot.dim(1), slots = N * k, E = num_experts;
    check(expert_of_slot.ndim == 2 && slot_row.numel() == slots && row_token.numel() == slots, op,
          "expected expert_of_slot [N,k], slot_row and row_token [N*k]; got " + expert_of_slot.shape_str() + ", " +
              slot_row.shape_str() + " and " + row_token.shape_str());
    check(E >= 1 && 2 * E + 1 <= kMaxPartials && slots <= INT32_MAX, op,
          "takes 1 to " + std::to_string((kMaxPartials - 1) / 2) + " experts and fewer than 2^31 slots; got " +
              std::to_string(E) + " experts, " + std::to_string(slots) + " slots");
    RoutingCounts out;
    out.num_tokens = int(N);
    out.top_k = int(k);
    out.num_experts = int(E);
    out.capacity = expert_capacity(capacity_factor, int(N), int(k), int(E));
    out.offsets.assign(size_t(E + 1), 0);
    out.dropped.assign(size_t(E), 0);
    if (slots == 0) return out;

    // Scratch: result [2E+1] and offsets [E+1] (int64), bad, counts [E, chunks].
    const int64_t chunks = (slots + kChunk - 1) / kChunk;
    auto* result = static_cast<int64_t*>(scratch(size_t(3 * E + 2) * 8 + 8 + size_t(E * chunks) * 4));
    int64_t* offsets = result + 2 * E + 1;
    auto* bad = reinterpret_cast<unsigned*>(offsets + E + 1);
    int32_t* counts = reinterpret_cast<int32_t*>(bad + 2);
    MOE_CUDA_CHECK(cudaMemsetAsync(bad, 0xff, sizeof(unsigned), stream()));
    MOE_CUDA_CHECK(cudaMemsetAsync(counts, 0, size_t(E * chunks) * 4, stream()));
    const int32_t* experts = expert_of_slot.ptr<int32_t>();
    count_kernel<<<cuda::blocks_for(slots, kCountThreads), kCountThreads, 0, stream()>>>(counts, bad, experts, slots,
                                                                                          int(E), chunks);
    MOE_CUDA_LAUNCHED();
    scan_kernel<<<1, kScanThreads, 0, stream()>>>(counts, result, offsets, bad, int(E), chunks, out.capacity);
    MOE_CUDA_LAUNCHED();
    place_kernel<<<unsigned((chunks + kPlaceWarps - 1) / kPlaceWarps), 32 * kPlaceWarps, 0, stream()>>>(
        slot_row.ptr<int32_t>(), row_token.ptr<int32_t>(), counts, offsets, experts, slots, int(E), int(k), chunks,
        out.capacity);
    MOE_CUDA_LAUNCHED();

    auto* host = reinterpret_cast<int64_t*>(host_results());
    MOE_CUDA_CHECK(cudaMemcpyAsync(host, result, size_t(2 * E + 1) * 8, cudaMemcpyDeviceToHost, stream()));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream()));
    if (host[2 * E] >= 0) {
        int32_t e = 0;
        MOE_CUDA_CHECK(cudaMemcpy(&e, experts + host[2 * E], sizeof e, cudaMemcpyDeviceToHost));
        throw std::logic_error("routing: slot " + std::to_string(host[2 * E]) + " names expert " + std::to_string(e));
    }
    for (int64_t e = 0; e < E; ++e) {
        out.offsets[size_t(e + 1)] = out.offsets[size_t(e)] + host[e];
        out.dropped[size_t(e)] = host[E + e];
    }
    return out;
}

}  // namespace moe
