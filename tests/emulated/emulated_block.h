// One CUDA block on the CPU: a fiber (ucontext) per GPU thread, run in turn
// until each reaches a barrier, so kernels written for the GPU run here as
// they are (tests/emulated: their inline PTX swapped for emulated_ptx.h's
// models). Slow and single-threaded, for small shapes; it checks a kernel's
// logic (indexing, masking, pipelining, synchronisation), not the GPU's
// speed or the hardware's own behaviour, which the gpu tests check.
//
// The GPU promises no order among a block's threads between barriers, nor
// among blocks. MOE_EMULATED_THREADS chooses the order here: `forward`
// (default: threads and blocks by index), `reverse`, `shuffled` (each
// round of threads, and the blocks, in an order drawn from a fixed seed), or
// `laggard` (by index, but one warp of each block, warp b mod warps of block
// b, runs only when no other thread can move: the others run ahead as far as
// the barriers they share with it allow, where the other orders keep every
// thread within one barrier of the rest). A kernel whose result depends on
// it (a thread reading what another writes without a barrier between, two
// blocks writing one element, a buffer refilled while a slower warp still
// has to read it) gives different bits under different orders.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>  // dim3, uint3

namespace moe::emulated {

struct Block {
    struct Fiber {
        ucontext_t context;
        bool done = false;
    };
    std::vector<Fiber> fibers;
    // Each thread's stack, kept from launch to launch (not cleared: a fiber
    // starts on it afresh).
    static constexpr size_t kStackBytes = size_t(256) << 10;
    std::vector<std::unique_ptr<char[]>> stacks;
    ucontext_t scheduler;
    int current = -1;
    uint3 thread{0, 0, 0}, block{0, 0, 0};
    dim3 block_dim, grid_dim;
    std::function<void()> body;
    // Dynamic shared memory: 16- but not 1024-byte aligned in its 1024-byte
    // window, as kernels must expect of the GPU's.
    std::vector<unsigned char> shared_store;
    unsigned char* shared = nullptr;
    // Barrier 0 is the block's, 1 + w warp w's, 33 + g warpgroup g's.
    int arrived[64] = {}, generation[64] = {};
    long progress = 0;  // arrivals and finished threads: a round without any is a deadlock
};
inline Block block;

inline void yield() { swapcontext(&block.fibers[size_t(block.current)].context, &block.scheduler); }

// Waits until `count` threads have arrived at barrier `id`.
inline void barrier(int id, int count) {
    const int g = block.generation[id];
    ++block.progress;
    if (++block.arrived[id] == count) {
        block.arrived[id] = 0;
        ++block.generation[id];
    } else {
        while (block.generation[id] == g) yield();
    }
}
inline int lane() { return int(block.thread.x) & 31; }
inline int warp() { return int(block.thread.x) >> 5; }
inline int warpgroup() { return int(block.thread.x) >> 7; }
inline void block_barrier() { barrier(0, int(block.block_dim.x)); }
inline void warp_barrier() { barrier(1 + warp(), 32); }
inline void warpgroup_barrier() { barrier(33 + warpgroup(), 128); }

// The shared-memory address of p (an offset in the 1024-byte-aligned window).
inline uint32_t shared_address(const void* p) {
    const uintptr_t window = reinterpret_cast<uintptr_t>(block.shared) & ~uintptr_t(1023);
    return uint32_t(reinterpret_cast<uintptr_t>(p) - window);
}
inline const unsigned char* shared_at(uint32_t address) {
    return reinterpret_cast<const unsigned char*>(reinterpret_cast<uintptr_t>(block.shared) & ~uintptr_t(1023)) +
           address;
}

inline void run_fiber() {
    block.body();
    ++block.progress;
    block.fibers[size_t(block.current)].done = true;
    swapcontext(&block.fibers[size_t(block.current)].context, &block.scheduler);
}

enum class Order { forward, reverse, shuffled, laggard };

// MOE_EMULATED_THREADS, read once; anything else stops with the choices.
inline Order order() {
    static const Order chosen = [] {
        const char* v = std::getenv("MOE_EMULATED_THREADS");
        const std::string s = v ? v : "forward";
        if (s == "forward") return Order::forward;
        if (s == "reverse") return Order::reverse;
        if (s == "shuffled") return Order::shuffled;
        if (s == "laggard") return Order::laggard;
        throw std::invalid_argument("MOE_EMULATED_THREADS=" + s + ": expected forward, reverse, shuffled or laggard");
    }();
    return chosen;
}

// 0 .. n-1 in the chosen order (shuffled: a new draw each call, from a
// sequence that starts the same in every run).
inline std::vector<int> ordered(int n) {
    static std::mt19937 draws(20261202);
    std::vector<int> indices(static_cast<size_t>(n));
    std::iota(indices.begin(), indices.end(), 0);
    if (order() == Order::reverse) std::reverse(indices.begin(), indices.end());
    if (order() == Order::shuffled) std::shuffle(indices.begin(), indices.end(), draws);
    return indices;
}

// Runs `body` (a kernel call) as every thread of every block of `grid`, one
// block after another, with `shared_bytes` of dynamic shared memory (filled
// with garbage first: kernels may not read what they did not write).
inline void launch(dim3 grid, int threads, size_t shared_bytes, std::function<void()> body) {
    block.block_dim = dim3(unsigned(threads), 1, 1);
    block.grid_dim = grid;
    block.body = std::move(body);
    block.shared_store.assign(shared_bytes + 2048, 0);
    const uintptr_t aligned = (reinterpret_cast<uintptr_t>(block.shared_store.data()) + 1023) & ~uintptr_t(1023);
    block.shared = reinterpret_cast<unsigned char*>(aligned + 16);
    for (const int b : ordered(int(grid.x * grid.y))) {
        const unsigned bx = unsigned(b) % grid.x, by = unsigned(b) / grid.x;
        block.block = {bx, by, 0};
        std::memset(block.shared, 0xCD, shared_bytes);
        std::memset(block.arrived, 0, sizeof block.arrived);
        block.fibers.assign(size_t(threads), Block::Fiber{});
        while (block.stacks.size() < size_t(threads))
            block.stacks.push_back(std::unique_ptr<char[]>(new char[Block::kStackBytes]));
        for (int t = 0; t < threads; ++t) {
            Block::Fiber& f = block.fibers[size_t(t)];
            getcontext(&f.context);
            f.context.uc_stack.ss_sp = block.stacks[size_t(t)].get();
            f.context.uc_stack.ss_size = Block::kStackBytes;
            f.context.uc_link = nullptr;
            makecontext(&f.context, run_fiber, 0);
        }
        // A round runs every thread that is not done (but the laggard warp's,
        // unless `all`) until it waits at a barrier or ends; whether any is left.
        const int laggard = order() == Order::laggard ? b % ((threads + 31) / 32) : -1;
        const auto round = [&](bool all) {
            bool left = false;
            for (const int t : ordered(threads)) {
                if (block.fibers[size_t(t)].done) continue;
                left = true;
                if (!all && t / 32 == laggard) continue;
                block.current = t;
                block.thread = {unsigned(t), 0, 0};
                swapcontext(&block.scheduler, &block.fibers[size_t(t)].context);
            }
            return left;
        };
        for (bool left = true; left;) {
            const long before = block.progress;
            left = round(laggard < 0);
            if (left && block.progress == before && laggard >= 0) left = round(true);  // all wait for the laggard
            if (left && block.progress == before)
                throw std::runtime_error("emulated block (" + std::to_string(bx) + ", " + std::to_string(by) +
                                         "): its threads wait at barriers that not all of them reach");
        }
    }
}

}  // namespace moe::emulated

// What kernels read of their launch, and the block barrier.
#define threadIdx (::moe::emulated::block.thread)
#define blockIdx (::moe::emulated::block.block)
#define blockDim (::moe::emulated::block.block_dim)
#define gridDim (::moe::emulated::block.grid_dim)
#define __syncthreads() ::moe::emulated::block_barrier()
