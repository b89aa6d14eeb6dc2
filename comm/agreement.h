// Decisions every rank of a job takes together. A rank that stops alone (a bad
// --set on one rank, a file only one node lacks) would leave the others
// waiting in their next collective; instead the ranks compare notes and all
// stop with the same message.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"

namespace moe {

// An error one rank met, raised on every rank of the job.
class JobError : public CommError {
public:
    JobError(int rank, const std::string& message) : CommError(message), rank_(rank) {}
    int rank() const { return rank_; }  // the lowest rank that met it

private:
    int rank_;
};

// Every rank passes the error it met (empty: none). If any rank met one, every
// rank throws JobError with the lowest such rank's message. Collective.
void stop_all_if_any_failed(Communicator& world, const std::string& error);

// Runs f on every rank; an exception from it on any rank becomes JobError on
// every rank. Without a world of several ranks, f's exceptions pass unchanged.
template <class F> void on_all_ranks(Communicator* world, F&& f) {
    if (!world || world->size() == 1) return std::forward<F>(f)();
    std::string error;
    try {
        std::forward<F>(f)();
    } catch (const std::exception& e) {
        error = e.what();
        if (error.empty()) error = "unknown error";
    }
    stop_all_if_any_failed(*world, error);
}

// Every rank's text, in rank order, on every rank. Collective.
std::vector<std::string> all_gather_strings(Communicator& world, const std::string& text);

// Throws JobError on every rank, naming the ranks whose `text` differs from
// rank 0's, unless all ranks hold the same text. `what` names the text in the
// message (e.g. "config"). Collective over world.
void check_same_on_all_ranks(Communicator& world, const std::string& what, const std::string& text);

}  // namespace moe
