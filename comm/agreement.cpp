#include "comm/agreement.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "comm/fnv1a.h"

namespace moe {

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

std::vector<std::string> all_gather_strings(Communicator& world, const std::string& text) {
    const size_t n = size_t(world.size());
    const int32_t mine = int32_t(text.size());
    std::vector<int32_t> lengths(n);
    world.all_gather(&mine, lengths.data(), 1, DType::I32);
    // Moved as I32 words, each text padded to the longest.
    const int64_t words = (*std::max_element(lengths.begin(), lengths.end()) + 3) / 4;
    std::vector<int32_t> padded(size_t(words), 0), all(n * size_t(words));
    std::memcpy(padded.data(), text.data(), text.size());
    world.all_gather(padded.data(), all.data(), words, DType::I32);
    std::vector<std::string> texts(n);
    for (size_t r = 0; r < n; ++r)
        texts[r].assign(reinterpret_cast<const char*>(all.data() + r * size_t(words)), size_t(lengths[r]));
    return texts;
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
        throw JobError(0, "ranks were started with different " + what + ": rank(s) " + differing +
                              " differ from rank 0; start every rank with the same " + what);
}

}  // namespace moe
