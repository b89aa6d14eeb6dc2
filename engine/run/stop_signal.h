// Stopping a run cleanly: SIGINT (Ctrl-C), SIGTERM (what schedulers send
// before a time limit or preemption) and SIGUSR1 ask the trainer to finish
// the current step, save a checkpoint and exit. A second SIGINT or SIGTERM
// ends the process at once.
#pragma once

namespace moe {

void install_stop_handlers();
// Whether a stop signal arrived (async-signal-safe flag).
bool stop_requested();

}  // namespace moe
