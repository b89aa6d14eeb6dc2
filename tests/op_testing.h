// Helpers for the CPU op tests: host vectors viewed as tensors, random fills,
// comparisons against naive double references, gradient bookkeeping, and
// running an op at a chosen OpenMP thread count.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/params/rng.h"
#include "kernels/tensor.h"
#include "tests/catch.h"
#include "tests/test_util.h"

namespace moe::test {

template <class T> Tensor tensor(std::vector<T>& v, std::initializer_list<int64_t> dims) {
    return Tensor(v.data(), dtype_of<T>(), dims);
}

template <class T = double> std::vector<T> normals(int64_t n, Rng& rng, double scale = 1) {
    std::vector<T> v(static_cast<size_t>(n));
    for (T& x : v) x = T(scale * rng.normal());
    return v;
}

template <class T> std::vector<T> cast(const std::vector<double>& v) { return std::vector<T>(v.begin(), v.end()); }

// Relative tolerance of an F32 or F64 op against a double reference.
template <class T> double tolerance() { return std::is_same<T, float>::value ? 2e-5 : 1e-12; }

// Each actual[i] lies within tol * max(1, |expected[i]|) of expected[i].
template <class T>
void require_close(const std::string& what, const std::vector<T>& actual, const std::vector<double>& expected,
                   double tol) {
    REQUIRE(actual.size() == expected.size());
    for (size_t i = 0; i < actual.size(); ++i) {
        INFO(what << "[" << i << "]: " << double(actual[i]) << " expected " << expected[i]);
        REQUIRE(std::fabs(double(actual[i]) - expected[i]) <= tol * std::max(1.0, std::fabs(expected[i])));
    }
}

// sum_i a[i] b[i]: with a random a, the loss whose gradient wrt b is a, so a
// backward under test receives a random upstream gradient.
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

// What a backward accumulated into a buffer that started as before.
inline std::vector<double> accumulated(std::vector<double> after, const std::vector<double>& before) {
    for (size_t i = 0; i < after.size(); ++i) after[i] -= before[i];
    return after;
}

// Runs f with OpenMP's thread count set to n, then restores the previous count.
template <class F> void with_threads(int n, F&& f) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(n);
    f();
    omp_set_num_threads(saved);
}

// f must throw a std::logic_error (a wrong shape is a programming error)
// whose message holds every part: the op's name, the shapes.
template <class F> void require_logic_error(F&& f, std::initializer_list<const char*> parts) {
    const std::string message = error_of<std::logic_error>(f);
    for (const char* part : parts) {
        INFO(message << " should mention " << part);
        REQUIRE(contains(message, part));
    }
}

// Runs op() with 1 and with 2 threads; the results (what op returns) must be
// bit-identical.
template <class F> void require_same_for_1_and_2_threads(F&& op) {
    decltype(op()) one, two;
    with_threads(1, [&] { one = op(); });
    with_threads(2, [&] { two = op(); });
    REQUIRE(one == two);
}

}  // namespace moe::test
