// Runs that die: moe-train processes killed with SIGKILL in the middle of
// training and in the middle of a save, or stopped by SIGTERM, then resumed
// with --resume auto. Every loss after the resume equals,
// bit for bit, the loss of a run that never stopped.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "engine/io/checkpoint.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;
using moe::test::contains;
namespace fs = std::filesystem;

namespace {

struct Launch {
    std::vector<std::string> args = {};  // after the config
    std::vector<std::string> env = {};   // "NAME=value" added to the environment
};

// Starts moe-train --config config [args], its output in out_path.
pid_t start(const std::string& config, const Launch& launch, const std::string& out_path) {
    const pid_t pid = fork();
    if (pid == 0) {
        FILE* out = std::freopen(out_path.c_str(), "w", stdout);
        if (!out || dup2(fileno(stdout), STDERR_FILENO) < 0) _exit(120);
        for (const std::string& e : launch.env) putenv(const_cast<char*>(e.c_str()));
        std::vector<std::string> words = {MOE_TRAIN_BIN, "--config", config};
        words.insert(words.end(), launch.args.begin(), launch.args.end());
        std::vector<char*> argv;
        for (std::string& w : words) argv.push_back(w.data());
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        _exit(127);
    }
    return pid;
}

int wait_exit(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct Result {
    int exit_code;
    std::string output;
};

Result run(const std::string& config, const Launch& launch, const std::string& out_path) {
    const int code = wait_exit(start(config, launch, out_path));
    std::ifstream f(out_path);
    return {code, std::string(std::istreambuf_iterator<char>(f), {})};
}

// The training losses of metrics.jsonl by step, as written (%.17g: exact).
std::map<int, std::string> losses(const std::string& run_dir) {
    std::map<int, std::string> out;
    std::ifstream f(run_dir + "/metrics.jsonl");
    for (std::string line; std::getline(f, line);) {
        int step = 0;
        const size_t at = line.find("\"loss\": ");
        if (std::sscanf(line.c_str(), "{\"step\": %d", &step) != 1 || at == std::string::npos) continue;
        out[step] = line.substr(at + 8, line.find(',', at) - at - 8);
    }
    return out;
}

// Waits until cond holds (polling), or fails the test after 60 s.
template <class F> void wait_until(F cond, const char* what) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!cond()) {
        if (std::chrono::steady_clock::now() > give_up) FAIL("timed out waiting for " << what);
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
}

bool incomplete_save_exists(const std::string& run_dir) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(checkpoints_dir(run_dir), ec)) {
        const std::string name = e.path().filename().string();
        if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp" &&
            fs::exists(e.path() / "optimizer-00000-of-00001.safetensors"))
            return true;
    }
    return false;
}

// A 30-step run with a checkpoint every 5, its config file, and the losses of
// the same run never stopped.
struct Scenario {
    Config cfg;
    std::string config_path;
    std::map<int, std::string> reference;

    explicit Scenario(const std::string& name) {
        cfg = moe::test::small_config(name);
        cfg.train.steps = 30;
        cfg.checkpoint.every = 5;
        cfg.eval.every = 0;
        const std::string out_dir = cfg.run.out_dir;
        cfg.run.out_dir = out_dir + "-reference";
        config_path = out_dir + ".yaml";
        std::ofstream(config_path) << to_yaml(cfg);
        REQUIRE(run(config_path, {}, out_dir + "-reference.log").exit_code == 0);
        reference = losses(cfg.run.out_dir);
        REQUIRE(reference.size() == 30);
        cfg.run.out_dir = out_dir;
        std::ofstream(config_path) << to_yaml(cfg);
    }
    std::string log(const std::string& what) const { return cfg.run.out_dir + "-" + what + ".log"; }
};

}  // namespace

TEST_CASE("a run killed in the middle of training resumes to the same losses", "[unit]") {
    Scenario s("resume-kill");
    const pid_t pid = start(s.config_path, {}, s.log("killed"));
    wait_until([&] { return losses(s.cfg.run.out_dir).size() >= 12; }, "step 12");
    kill(pid, SIGKILL);
    REQUIRE(wait_exit(pid) == 128 + SIGKILL);

    const Result resumed = run(s.config_path, {{"--resume", "auto"}}, s.log("resumed"));
    REQUIRE(resumed.exit_code == 0);
    CHECK(contains(resumed.output, "resumed from"));
    CHECK(losses(s.cfg.run.out_dir) == s.reference);  // every step, exactly
}

TEST_CASE("a run killed in the middle of a save resumes from the checkpoint before", "[unit]") {
    Scenario s("resume-kill-save");
    // Each save pauses once it is complete, before it is published.
    Launch slow_saves;
    slow_saves.env = {std::string("LD_PRELOAD=") + MOE_STALL_PUBLISH_LIB, "MOE_STALL_PUBLISH_S=0.3"};
    const pid_t pid = start(s.config_path, slow_saves, s.log("killed"));
    wait_until([&] { return losses(s.cfg.run.out_dir).size() >= 10 && incomplete_save_exists(s.cfg.run.out_dir); },
               "the save of step 10");
    kill(pid, SIGKILL);
    REQUIRE(wait_exit(pid) == 128 + SIGKILL);
    CHECK(latest_checkpoint(s.cfg.run.out_dir) == checkpoints_dir(s.cfg.run.out_dir) + "/step-00000005");

    const Result resumed = run(s.config_path, {{"--resume", "auto"}}, s.log("resumed"));
    REQUIRE(resumed.exit_code == 0);
    CHECK(contains(resumed.output, "step-00000005 at step 5"));
    CHECK(losses(s.cfg.run.out_dir) == s.reference);
    CHECK_FALSE(incomplete_save_exists(s.cfg.run.out_dir));  // the next save cleared it
}

TEST_CASE("SIGTERM saves a checkpoint and exits, and the resumed run continues exactly", "[unit]") {
    Scenario s("resume-sigterm");
    const pid_t pid = start(s.config_path, {}, s.log("stopped"));
    wait_until([&] { return losses(s.cfg.run.out_dir).size() >= 7; }, "step 7");
    kill(pid, SIGTERM);
    REQUIRE(wait_exit(pid) == 3);  // stopped early, with a checkpoint
    const int stopped_at = losses(s.cfg.run.out_dir).rbegin()->first;
    CHECK(read_checkpoint_info(latest_checkpoint(s.cfg.run.out_dir)).progress.step == stopped_at);

    const Result resumed = run(s.config_path, {{"--resume", "auto"}}, s.log("resumed"));
    REQUIRE(resumed.exit_code == 0);
    CHECK(losses(s.cfg.run.out_dir) == s.reference);
}

TEST_CASE("running the finished command again says there is nothing left to train", "[unit]") {
    Scenario s("resume-twice");
    REQUIRE(run(s.config_path, {{"--resume", "auto"}}, s.log("first")).exit_code == 0);
    const Result again = run(s.config_path, {{"--resume", "auto"}}, s.log("again"));
    CHECK(again.exit_code == 0);
    CHECK(contains(again.output, "nothing left to train"));
    CHECK(contains(again.output, "final validation loss"));
    CHECK(losses(s.cfg.run.out_dir) == s.reference);
}
