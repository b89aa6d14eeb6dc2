// What the command-line tools share: bad input (arguments, files) ends the
// program with one line on stderr naming the program and the fix, exit code 2,
// after whatever it already printed.
#pragma once
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace moe {

[[noreturn]] inline void exit_with_error(const char* program, const std::string& message) {
    std::fflush(stdout);  // what was printed comes first, the reason last
    std::fprintf(stderr, "%s: %s\n", program, message.c_str());
    std::exit(2);
}

// The value of an integer flag: the whole text, at least `min`.
inline long integer_flag(const char* program, const std::string& flag, const char* text, long min) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (!*text || *end || errno || v < min)
        exit_with_error(program, flag + " takes an integer >= " + std::to_string(min) + ", got '" + text + "'");
    return v;
}

}  // namespace moe
