// Small helpers the tests share: scratch directories and error messages.
#pragma once
#include <filesystem>
#include <string>

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

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace moe::test
