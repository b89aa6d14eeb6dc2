// The command-line tools' argument walker (ToolArgs: flags one at a time,
// values checked, --help) and their way out on bad input (arguments, files):
// one line on stderr naming the program and the fix, exit code 2, after
// whatever the program already printed.
#pragma once
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace moe {

[[noreturn]] inline void exit_with_error(const char* program, const std::string& message) {
    std::fflush(stdout);  // what was printed comes first, the reason last
    std::fprintf(stderr, "%s: %s\n", program, message.c_str());
    std::exit(2);
}

// A config file and its --set key=value overrides, as the benchmarks take them.
struct ConfigFlags {
    std::string path;
    std::vector<std::string> overrides;
};

// A tool's command line, one argument at a time. --help and -h print the
// usage and exit 0; a missing or bad flag value ends the program with one
// line naming the flag.
class ToolArgs {
public:
    ToolArgs(const char* program, const char* usage, int argc, char** argv)
        : program_(program), usage_(usage), argc_(argc), argv_(argv) {}

    // Steps to the next argument; false past the last.
    bool next() {
        if (++at_ >= argc_) return false;
        arg_ = argv_[at_];
        if (arg_ == "--help" || arg_ == "-h") {
            std::fputs(usage_, stdout);
            std::exit(0);
        }
        return true;
    }
    const std::string& arg() const { return arg_; }
    // The argument after this flag.
    const char* value() {
        if (at_ + 1 >= argc_) fail_with_usage(arg_ + " needs a value");
        return argv_[++at_];
    }
    // The flag's value as an integer: the whole text, at least `min`.
    long integer(long min) {
        const char* text = value();
        char* end = nullptr;
        errno = 0;
        const long v = std::strtol(text, &end, 10);
        if (!*text || *end || errno || v < min)
            fail(arg_ + " takes an integer >= " + std::to_string(min) + ", got '" + text + "'");
        return v;
    }
    // The flag's value as a finite number: the whole text, at least `min`
    // (above it when !min_allowed), at most `max`.
    double number(double min, bool min_allowed = true, double max = INFINITY) {
        const char* text = value();
        char* end = nullptr;
        const double v = std::strtod(text, &end);
        if (!*text || *end || !std::isfinite(v) || v < min || (v == min && !min_allowed) || v > max) {
            std::string range = (min_allowed ? ">= " : "> ") + format_number(min);
            if (std::isfinite(max))
                range = std::string("in ") + (min_allowed ? "[" : "(") + format_number(min) + ", " +
                        format_number(max) + "]";
            fail(arg_ + " takes a number " + range + ", got '" + text + "'");
        }
        return v;
    }
    // Takes this argument when it is --config FILE or --set key=value.
    bool config_flag(ConfigFlags& c) {
        if (arg_ == "--config") c.path = value();
        else if (arg_ == "--set") c.overrides.push_back(value());
        else return false;
        return true;
    }
    // After the last argument: --config was given.
    void require_config(const ConfigFlags& c) const {
        if (c.path.empty()) fail_with_usage("--config is required");
    }
    [[noreturn]] void fail(const std::string& message) const { exit_with_error(program_, message); }
    // The message, then the usage.
    [[noreturn]] void fail_with_usage(const std::string& message) const { fail(message + "\n" + usage_); }

private:
    static std::string format_number(double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", v);
        return buf;
    }
    const char* program_;
    const char* usage_;
    int argc_;
    char** argv_;
    int at_ = 0;
    std::string arg_;
};

}  // namespace moe
