// File primitives the data path, checkpoints and metrics share: positioned
// reads that check their length, and crash-safe whole-file writes. Every
// failure is a DataError: one line naming the file and the fix.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// Shards and safetensors are little-endian; the engine reads them by memcpy.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the data formats are little-endian");

namespace moe {

struct DataError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A regular file opened for positioned reads (pread: no shared file offset).
// Anything else (a FIFO, a device, a directory) is refused at once.
class ReadOnlyFile {
public:
    explicit ReadOnlyFile(const std::string& path);
    ~ReadOnlyFile();
    ReadOnlyFile(ReadOnlyFile&& other) noexcept;
    ReadOnlyFile& operator=(ReadOnlyFile&& other) noexcept;
    ReadOnlyFile(const ReadOnlyFile&) = delete;
    ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;

    const std::string& path() const { return path_; }
    uint64_t size() const { return size_; }  // when opened
    // Exactly n bytes at offset, or a DataError naming the file and the offset.
    void read_at(uint64_t offset, void* dst, size_t n) const;

private:
    std::string path_;
    int fd_ = -1;
    uint64_t size_ = 0;
};

// The whole of a small regular file, at most max_bytes: a FIFO, a device or
// a file that large is a DataError, refused before anything is read.
std::string read_small_file(const std::string& path, uint64_t max_bytes);

// Bytes to write, in order, without copying them first.
using ByteSpan = std::pair<const void*, size_t>;

// What was written: its size and CRC-32C (io/crc32c.h).
struct FileDigest {
    uint64_t bytes = 0;
    uint32_t crc32c = 0;
};

// Writes path.tmp, fsyncs it, renames it over path and fsyncs the directory:
// a crash leaves the old file or the new one, never a torn one.
FileDigest write_file_atomically(const std::string& path, const std::vector<ByteSpan>& parts);
// The digest of a file as it is on disk (DataError if it cannot be read),
// read in large pieces and checksummed on every core.
FileDigest digest_file(const std::string& path);
// Its FNV-1a (comm/fnv1a.h), what checkpoints of format 1 recorded.
uint64_t fnv1a_of_file(const std::string& path);

}  // namespace moe
