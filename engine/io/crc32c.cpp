#include "engine/io/crc32c.h"

#include <omp.h>

#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace moe {

namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // x^32 + ... reflected

struct Table {
    uint32_t t[256];
    Table() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ kPoly : c >> 1;
            t[i] = c;
        }
    }
};

// On the raw register (no initial or final inversion).
uint32_t raw_table(uint32_t reg, const unsigned char* p, size_t n) {
    static const Table table;
    for (size_t i = 0; i < n; ++i) reg = table.t[(reg ^ p[i]) & 0xFF] ^ (reg >> 8);
    return reg;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t raw_sse42(uint32_t reg, const unsigned char* p, size_t n) {
    uint64_t r = reg;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t word;
        std::memcpy(&word, p, 8);
        r = _mm_crc32_u64(r, word);
    }
    uint32_t r32 = uint32_t(r);
    for (; n > 0; --n, ++p) r32 = _mm_crc32_u8(r32, *p);
    return r32;
}

bool have_sse42() {
    static const bool yes = __builtin_cpu_supports("sse4.2");
    return yes;
}
#endif

uint32_t raw(uint32_t reg, const unsigned char* p, size_t n) {
#if defined(__x86_64__)
    if (have_sse42()) return raw_sse42(reg, p, n);
#endif
    return raw_table(reg, p, n);
}

// a(x) b(x) mod p(x), in the reflected representation (bit 31 is x^0).
uint32_t multiply_mod_p(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (uint32_t m = 1u << 31; m != 0; m >>= 1) {
        if (a & m) product ^= b;
        b = b & 1 ? (b >> 1) ^ kPoly : b >> 1;
    }
    return product;
}

// x^(8 n) mod p(x): advancing a register over n zero bytes multiplies it by this.
uint32_t x_pow_8n_mod_p(uint64_t n) {
    uint32_t result = 1u << 31;  // x^0
    uint32_t square = 1u << 23;  // x^8
    for (; n != 0; n >>= 1) {
        if (n & 1) result = multiply_mod_p(square, result);
        square = multiply_mod_p(square, square);
    }
    return result;
}

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
    return ~raw(~crc, static_cast<const unsigned char*>(data), n);
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b) {
    return multiply_mod_p(x_pow_8n_mod_p(length_b), crc_a) ^ crc_b;
}

uint32_t crc32c_parallel(uint32_t crc, const void* data, size_t n) {
    constexpr size_t kPiece = size_t(8) << 20;
    const int threads = omp_get_max_threads();
    if (n < 2 * kPiece || threads < 2) return crc32c(crc, data, n);
    const auto* p = static_cast<const unsigned char*>(data);
    const size_t pieces = (n + kPiece - 1) / kPiece;
    std::vector<uint32_t> part(pieces);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < pieces; ++i) {
        const size_t at = i * kPiece, len = std::min(kPiece, n - at);
        part[i] = crc32c(0, p + at, len);
    }
    for (size_t i = 0; i < pieces; ++i) crc = crc32c_combine(crc, part[i], std::min(kPiece, n - i * kPiece));
    return crc;
}

}  // namespace moe
