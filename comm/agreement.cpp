#include "comm/agreement.h"

#include <cstring>
#include <vector>

namespace moe {

namespace {

// FNV-1a, 64 bits: a fingerprint to compare texts across ranks.
uint64_t fnv1a(const std::string& text) {
    uint64_t hash = 14695981039346656037ull;
    for (unsigned char c : text) {
        hash ^= c;
        hash *= 1099511628211ull;
    }
    return hash;
}

}  // namespace

void stop_all_if_any_failed(Communicator& world, const std::string& error) {
    // The lowest failing rank r is found as the largest (size - r).
    int32_t key = error.empty() ? 0 : world.size() - world.rank();
    world.all_reduce(&key, 1, DType::I32, ReduceOp::Max);
    if (key == 0) return;
    const int failed = world.size() - key;
    int32_t length = failed == world.rank() ? int32_t(error.size()) : 0;
    world.broadcast(&length, sizeof length, failed);
    std::string message = error;
    message.resize(size_t(length));
    world.broadcast(message.data(), length, failed);
    throw JobError(failed, message);
}

void check_same_on_all_ranks(Communicator& world, const std::string& what, const std::string& text) {
    // The 64-bit hash travels as two I32 (the interface moves no 64-bit integers).
    const uint64_t hash = fnv1a(text);
    int32_t mine[2];
    std::memcpy(mine, &hash, sizeof hash);
    std::vector<int32_t> all(2 * size_t(world.size()));
    world.all_gather(mine, all.data(), 2, DType::I32);

    std::string differing;
    for (int r = 1; r < world.size(); ++r) {
        if (std::memcmp(&all[2 * size_t(r)], &all[0], sizeof hash) == 0) continue;
        differing += (differing.empty() ? "" : ", ") + std::to_string(r);
    }
    if (!differing.empty())
        throw CommError("ranks were started with different " + what + ": rank(s) " + differing +
                        " differ from rank 0; start every rank with the same " + what);
}

}  // namespace moe
