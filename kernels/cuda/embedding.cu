// Token embedding on the GPU. The forward is a row gather (16-byte copies when
// rows allow). The backward adds each token's gradient row into its id's table
// row without float atomics: (id, position) pairs are stably radix-sorted by
// id, a kernel marks where each id's run of the sorted pairs begins and ends,
// and one block per table row sums its run's rows in position order, in fp32,
// before adding them to dtable, so every run gives the same bits. ids are
// checked against V by the caller (ops.h); one outside [0, V) anyway reads as
// a NaN row and adds nothing.
#include <cub/cub.cuh>

#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::bf16;
using cuda::require_dtype;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ uint4 nan_chunk(const uint4*) {
    constexpr unsigned kNanPair = 0x7fc07fc0u;  // two bf16 quiet NaNs
    return make_uint4(kNanPair, kNanPair, kNanPair, kNanPair);
}
__device__ __forceinline__ bf16 nan_chunk(const bf16*) { return __float2bfloat16_rn(NAN); }

// out[n] = table[ids[n]] in chunks of Chunk (uint4: 8 bf16, or one bf16);
// `chunks` per row.
template <class Chunk>
__global__ void embedding_forward_kernel(Chunk* out, const Chunk* table, const int32_t* ids, int64_t N, int64_t V,
                                         int64_t chunks) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * chunks;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int32_t id = ids[i / chunks];
        out[i] = id >= 0 && id < V ? table[id * chunks + i % chunks] : nan_chunk(table);
    }
}

// The sort's input: key = the id (V for a bad one, a run no block visits)
// and value = the position.
__global__ void sort_input_kernel(uint32_t* keys, int32_t* positions, const int32_t* ids, int64_t N, int64_t V) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
        const int32_t id = ids[i];
        keys[i] = id >= 0 && id < V ? uint32_t(id) : uint32_t(V);
        positions[i] = int32_t(i);
    }
}

// run_begin[key], run_end[key]: where each key's run lies in the sorted keys
// (both zeroed first, so an absent key has an empty run). The thread at
// each end of a run writes it: one writer per entry.
__global__ void run_bounds_kernel(int32_t* run_begin, int32_t* run_end, const uint32_t* keys, int64_t N) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
        const uint32_t key = keys[i];
        if (i == 0 || keys[i - 1] != key) run_begin[key] = int32_t(i);
        if (i == N - 1 || keys[i + 1] != key) run_end[key] = int32_t(i + 1);
    }
}

// Columns a lane sums per tile; a tile is as wide as the block.
constexpr int kColsPerLane = 8;
constexpr int kTile = 32 * kColsPerLane;
static_assert(kTile == kThreads, "one thread per column of a tile adds the warps' sums");

// dtable[v] (+)= sum of dout[positions[i]] over v's run (overwriting writes
// zeros where v has no run). Per tile of columns, warp w sums the run's rows
// w, w + kWarps, ... in order (lane l taking columns l, l + 32, ...), then
// thread t adds column t over the warps in order.
__global__ void embedding_backward_kernel(float* dtable, const bf16* dout, const int32_t* positions,
                                          const int32_t* run_begin, const int32_t* run_end, int64_t V, int64_t H,
                                          bool accumulate) {
    __shared__ float part[kWarps][kTile];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t v = blockIdx.x; v < V; v += gridDim.x) {
        const int32_t begin = run_begin[v], end = run_end[v];
        if (begin == end) {  // the same for the whole block
            if (!accumulate)
                for (int64_t c = threadIdx.x; c < H; c += kThreads) dtable[v * H + c] = 0;
            continue;
        }
        for (int64_t c0 = 0; c0 < H; c0 += kTile) {
            float acc[kColsPerLane] = {};
            // Unrolled so that the loads of several rows are in flight at once.
#pragma unroll 4
            for (int32_t i = begin + warp; i < end; i += kWarps) {
                const bf16* src = dout + int64_t(positions[i]) * H + c0;
#pragma unroll
                for (int q = 0; q < kColsPerLane; ++q)
                    if (c0 + lane + 32 * q < H) acc[q] += __bfloat162float(src[lane + 32 * q]);
            }
#pragma unroll
            for (int q = 0; q < kColsPerLane; ++q) part[warp][lane + 32 * q] = acc[q];
            __syncthreads();
            if (c0 + threadIdx.x < H) {
                float sum = 0;
                for (int w = 0; w < kWarps; ++w) sum += part[w][threadIdx.x];
                float& out = dtable[v * H + c0 + threadIdx.x];
                out = accumulate ? out + sum : sum;
            }
            __syncthreads();  // part is refilled by the next tile
        }
    }
}

// table [V,H] and rows [N,H] for N = ids.numel().
void check_lookup(const char* op, const Tensor& rows, const Tensor& ids, const Tensor& table) {
    require_dtype(op, "ids", ids, DType::I32);
    check(table.ndim == 2 && rows.ndim == 2 && rows.dim(0) == ids.numel() && rows.dim(1) == table.dim(1) &&
              ids.numel() <= INT_MAX && table.dim(0) < INT_MAX,
          op,
          "expected table [V,H] and rows [N,H] for N = " + std::to_string(ids.numel()) + " ids; got table " +
              table.shape_str() + " and rows " + rows.shape_str());
}

constexpr size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

void CudaOps::embedding_forward(Tensor out, Tensor ids, Tensor table) {
    const char* op = "embedding_forward";
    require_dtype(op, "out", out, DType::BF16);
    require_dtype(op, "table", table, DType::BF16);
    check_lookup(op, out, ids, table);
    const int64_t N = ids.numel(), V = table.dim(0), H = table.dim(1);
    if (N == 0 || H == 0) return;
    if (cuda::chunks_of_8(H, {out.data, table.data}))
        embedding_forward_kernel<<<cuda::blocks_for(N * H / 8, kThreads), kThreads, 0, stream()>>>(
            static_cast<uint4*>(out.data), static_cast<const uint4*>(table.data), ids.ptr<int32_t>(), N, V, H / 8);
    else
        embedding_forward_kernel<<<cuda::blocks_for(N * H, kThreads), kThreads, 0, stream()>>>(
            static_cast<bf16*>(out.data), static_cast<const bf16*>(table.data), ids.ptr<int32_t>(), N, V, H);
    MOE_CUDA_LAUNCHED();
}

void CudaOps::embedding_backward(Tensor dtable, Tensor ids, Tensor dout, Write dw_write) {
    const char* op = "embedding_backward";
    require_dtype(op, "dtable", dtable, DType::F32);
    require_dtype(op, "dout", dout, DType::BF16);
    if (dtable.empty()) return;
    check_lookup(op, dout, ids, dtable);
    const int64_t N = ids.numel(), V = dtable.dim(0), H = dtable.dim(1);
    if (N == 0 || H == 0) {
        if (dw_write == Write::overwrite) zero(dtable);
        return;
    }

    // Keys go up to V (bad ids), so the sort needs only the bits of V.
    int end_bit = 1;
    while ((int64_t(1) << end_bit) <= V) ++end_bit;
    size_t sort_bytes = 0;
    uint32_t* no_keys = nullptr;  // the size query reads no data, only the types
    int32_t* no_positions = nullptr;
    MOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, no_keys, no_keys, no_positions, no_positions,
                                                   int(N), 0, end_bit, stream()));
    const size_t array = align256(size_t(N) * 4), bounds = align256(size_t(V + 1) * 4);
    char* base = static_cast<char*>(scratch(4 * array + 2 * bounds + sort_bytes));
    auto* keys_in = reinterpret_cast<uint32_t*>(base);
    auto* keys = reinterpret_cast<uint32_t*>(base + array);
    auto* positions_in = reinterpret_cast<int32_t*>(base + 2 * array);
    auto* positions = reinterpret_cast<int32_t*>(base + 3 * array);
    auto* run_begin = reinterpret_cast<int32_t*>(base + 4 * array);
    auto* run_end = reinterpret_cast<int32_t*>(base + 4 * array + bounds);
    void* sort_storage = base + 4 * array + 2 * bounds;

    sort_input_kernel<<<cuda::blocks_for(N, kThreads), kThreads, 0, stream()>>>(keys_in, positions_in,
                                                                               ids.ptr<int32_t>(), N, V);
    MOE_CUDA_LAUNCHED();
    // Radix sort is stable: within a run, positions stay in token order.
    MOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_storage, sort_bytes, keys_in, keys, positions_in, positions,
                                                   int(N), 0, end_bit, stream()));
    MOE_CUDA_CHECK(cudaMemsetAsync(run_begin, 0, 2 * bounds, stream()));
    run_bounds_kernel<<<cuda::blocks_for(N, kThreads), kThreads, 0, stream()>>>(run_begin, run_end, keys, N);
    MOE_CUDA_LAUNCHED();
    embedding_backward_kernel<<<cuda::blocks_for(V, 1), kThreads, 0, stream()>>>(
        dtable.ptr<float>(), static_cast<const bf16*>(dout.data), positions, run_begin, run_end, V, H,
        dw_write == Write::add);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
