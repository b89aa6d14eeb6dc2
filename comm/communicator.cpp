#include "comm/communicator.h"

#include <chrono>
#include <string>

namespace moe {

namespace {

void check_counts(const std::vector<int64_t>& counts, const char* name, int group_size) {
    if (counts.size() != size_t(group_size))
        throw CommError(std::string("all_to_all_v: ") + name + " has " + std::to_string(counts.size()) +
                        " entries for a group of " + std::to_string(group_size) + " ranks; give one count per rank");
    for (size_t p = 0; p < counts.size(); ++p)
        if (counts[p] < 0)
            throw CommError(std::string("all_to_all_v: ") + name + "[" + std::to_string(p) + "] is " +
                            std::to_string(counts[p]) + "; counts must be >= 0");
}

}  // namespace

void Communicator::all_to_all(const void* send, void* recv, int64_t count, DType dtype) {
    const std::vector<int64_t> counts(size_t(size()), count);
    all_to_all_v(send, counts, recv, counts, dtype);
}

void Communicator::all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                                const std::vector<int64_t>& recv_counts, DType dtype) {
    check_counts(send_counts, "send_counts", size());
    check_counts(recv_counts, "recv_counts", size());
    const auto start = std::chrono::steady_clock::now();
    do_all_to_all_v(send, send_counts, recv, recv_counts, dtype);
    seconds_in_all_to_all_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (int p = 0; p < size(); ++p)
        if (p != rank()) bytes_sent_all_to_all_ += send_counts[size_t(p)] * int64_t(dtype_size(dtype));
}

}  // namespace moe
