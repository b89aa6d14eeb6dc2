// FNV-1a, 64 bits: a fingerprint of bytes. Ranks compare configs by it, and
// checkpoints record one per file to catch truncation and corruption (not
// tampering: it is not a cryptographic hash).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace moe {

class Fnv1a {
public:
    Fnv1a& update(const void* data, size_t n) {
        const unsigned char* p = static_cast<const unsigned char*>(data);
        for (size_t i = 0; i < n; ++i) {
            hash_ ^= p[i];
            hash_ *= 1099511628211ull;
        }
        return *this;
    }
    uint64_t value() const { return hash_; }

private:
    uint64_t hash_ = 14695981039346656037ull;
};

inline uint64_t fnv1a(const std::string& text) { return Fnv1a().update(text.data(), text.size()).value(); }

}  // namespace moe
