// moe-train's command line: what it accepts and how it refuses.
#include <string>
#include <vector>

#include "engine/config/cli.h"
#include "tests/catch.h"

using namespace moe;

namespace {
CliOptions parse(std::vector<const char*> args) {
    args.insert(args.begin(), "moe-train");
    return parse_cli(int(args.size()), args.data());
}

std::string error_of(std::vector<const char*> args) {
    try {
        parse(std::move(args));
    } catch (const CliError& e) {
        return e.what();
    }
    return "";
}
}  // namespace

TEST_CASE("command line options are parsed", "[unit]") {
    const CliOptions o = parse({"--config", "c.yaml", "--set", "a.b=1", "--set", "c=2", "--init-from", "w.st"});
    REQUIRE(o.config == "c.yaml");
    REQUIRE(o.overrides == std::vector<std::string>{"a.b=1", "c=2"});
    REQUIRE(o.init_from == "w.st");
    const CliOptions p = parse({"--config", "c.yaml", "--batch", "b", "--dump-grads", "g", "--dtype", "f64"});
    REQUIRE(p.batch == "b");
    REQUIRE(p.dump_grads == "g");
    REQUIRE(p.dtype == "f64");
    REQUIRE(parse({"--help"}).help);
}

TEST_CASE("bad command lines are refused with one clear line", "[unit]") {
    REQUIRE(error_of({}).find("--config FILE is required") != std::string::npos);
    REQUIRE(error_of({"--config"}).find("--config needs a value") != std::string::npos);
    REQUIRE(error_of({"--config", "c", "--frobnicate"}).find("unknown argument '--frobnicate'") != std::string::npos);
    REQUIRE(error_of({"--config", "c", "--batch", "b"}).find("needs both --batch and --dump-grads") !=
            std::string::npos);
    REQUIRE(error_of({"--config", "c", "--batch", "b", "--dump-grads", "g", "--dtype", "f16"})
                .find("--dtype must be f32 or f64") != std::string::npos);
    REQUIRE(error_of({"--config", "c", "--dtype", "f64"}).find("parity mode") != std::string::npos);
}
