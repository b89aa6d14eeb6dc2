// CRC-32C (Castagnoli, the iSCSI/ext4/gRPC checksum: reflected polynomial
// 0x82F63B78, initial value and final xor 0xFFFFFFFF), for checkpoint files.
// The SSE4.2 crc32 instruction computes it where the CPU has one (every
// x86-64 of the last fifteen years), a table where not; a large buffer is
// split over the cores and the pieces' CRCs combined, so the value is the
// standard CRC-32C of the whole, whatever the number of threads.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

// The CRC of data[0, n) continued from crc (0 for the start of a message).
uint32_t crc32c(uint32_t crc, const void* data, size_t n);
// The same over the OpenMP threads, for buffers worth splitting.
uint32_t crc32c_parallel(uint32_t crc, const void* data, size_t n);
// The CRC of A followed by B from crc(A), crc(B) and B's length.
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

// Streaming: a file's CRC as its parts are written.
class Crc32c {
public:
    void update(const void* data, size_t n) { crc_ = crc32c_parallel(crc_, data, n); }
    uint32_t value() const { return crc_; }

private:
    uint32_t crc_ = 0;
};

}  // namespace moe
