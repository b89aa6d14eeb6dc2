// Small helpers the tests share: scratch directories, error messages, and
// running the tools as processes.
#pragma once
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/catch.h"

namespace moe::test {

// An empty directory under the build tree: <build>/test_data/<suite>/<name>.
inline std::string fresh_dir(const std::string& suite, const std::string& name) {
    const std::string dir = std::string(MOE_BINARY_DIR) + "/test_data/" + suite + "/" + name;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

// The message of the exception of type E that f throws; fails the test if none.
template <class E, class F> std::string error_of(F f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    FAIL("the expected exception was not thrown");
    return "";
}

// What a program run by run_program did.
struct ProgramResult {
    int exit_code;       // 128 + the signal when one ended it
    std::string output;  // stdout and stderr, or stdout alone when stderr was kept apart
    std::string errors;  // stderr when kept apart
};

enum class Stderr { merged, apart };

inline std::string shell_quoted(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

// Runs program with args (one OpenMP thread) and waits for it; its stderr
// goes with its stdout, or apart into errors.
inline ProgramResult run_program(const std::string& program, const std::vector<std::string>& args,
                                 Stderr err = Stderr::merged) {
    std::string command = "OMP_NUM_THREADS=1 " + shell_quoted(program);
    for (const std::string& a : args) command += " " + shell_quoted(a);
    char errors_path[] = "/tmp/moe-test-stderr-XXXXXX";
    if (err == Stderr::apart) {
        const int fd = mkstemp(errors_path);
        REQUIRE(fd >= 0);
        close(fd);
    }
    FILE* pipe = popen((command + (err == Stderr::apart ? " 2>" + shell_quoted(errors_path) : " 2>&1")).c_str(), "r");
    REQUIRE(pipe);
    std::string output;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) output.append(buf, n);
    const int status = pclose(pipe);
    std::string errors;
    if (err == Stderr::apart) {
        std::ifstream in(errors_path, std::ios::binary);
        errors.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        std::remove(errors_path);
    }
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), output, errors};
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A full disk, for this process: while it lives no file may grow past `bytes`
// (writes past it fail with EFBIG, as they would with ENOSPC).
class FileSizeLimit {
public:
    explicit FileSizeLimit(rlim_t bytes) {
        getrlimit(RLIMIT_FSIZE, &old_);
        old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
        const rlimit small{bytes, old_.rlim_max};
        setrlimit(RLIMIT_FSIZE, &small);
    }
    ~FileSizeLimit() {
        setrlimit(RLIMIT_FSIZE, &old_);
        std::signal(SIGXFSZ, old_handler_);
    }
    FileSizeLimit(const FileSizeLimit&) = delete;
    FileSizeLimit& operator=(const FileSizeLimit&) = delete;

private:
    rlimit old_{};
    void (*old_handler_)(int) = nullptr;
};

}  // namespace moe::test
