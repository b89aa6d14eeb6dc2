// Deterministic random numbers, identical on every platform and standard
// library (std::normal_distribution is not): mt19937_64 bits turned into
// uniforms and normals by formulas written here.
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <string>

namespace moe {

class Rng {
public:
    explicit Rng(uint64_t seed) : gen_(seed) {}
    // A stream for a named purpose, independent of any other name's stream.
    Rng(uint64_t seed, const std::string& name) : gen_(seed ^ fnv1a(name)) {}

    double uniform() { return double(gen_() >> 11) * 0x1.0p-53; }  // [0, 1)
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    double normal() {  // Box-Muller, one value per call
        double u1 = uniform();
        while (u1 <= 0) u1 = uniform();
        const double u2 = uniform();
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    }
    uint64_t next() { return gen_(); }
    std::mt19937_64& engine() { return gen_; }

    static uint64_t fnv1a(const std::string& s) {
        uint64_t h = 1469598103934665603ull;
        for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
        return h;
    }

private:
    std::mt19937_64 gen_;
};

}  // namespace moe
