#include "engine/run/stop_signal.h"

#include <csignal>
#include <initializer_list>

namespace moe {

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_stop_signal(int sig) {
    if (g_stop && sig != SIGUSR1) {  // asked twice: stop now
        std::signal(sig, SIG_DFL);
        std::raise(sig);
        return;
    }
    g_stop = 1;
}

}  // namespace

void install_stop_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

bool stop_requested() { return g_stop != 0; }

}  // namespace moe
