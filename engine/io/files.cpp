#include "engine/io/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "comm/fnv1a.h"
#include "engine/io/crc32c.h"

namespace moe {

ReadOnlyFile::ReadOnlyFile(const std::string& path) : path_(path) {
    // Non-blocking: a FIFO opens at once (and is refused below) instead of
    // waiting for a writer; reads of a regular file do not change.
    fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd_ < 0)
        throw DataError("'" + path + "': cannot open (" + std::strerror(errno) + "): check the path and permissions");
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd_);
        throw DataError("'" + path + "' is not a regular file: name a data file");
    }
    size_ = uint64_t(st.st_size);
}

ReadOnlyFile::~ReadOnlyFile() {
    if (fd_ >= 0) ::close(fd_);
}

ReadOnlyFile::ReadOnlyFile(ReadOnlyFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), size_(other.size_) {}

ReadOnlyFile& ReadOnlyFile::operator=(ReadOnlyFile&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        path_ = std::move(other.path_);
        fd_ = std::exchange(other.fd_, -1);
        size_ = other.size_;
    }
    return *this;
}

void ReadOnlyFile::read_at(uint64_t offset, void* dst, size_t n) const {
    size_t done = 0;
    while (done < n) {
        const ssize_t got = ::pread(fd_, static_cast<char*>(dst) + done, n - done, off_t(offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            throw DataError("'" + path_ + "': cannot read at byte offset " + std::to_string(offset + done) + " (" +
                            std::strerror(errno) + "): check the disk");
        if (got == 0)
            throw DataError("'" + path_ + "': " + std::to_string(n) + " bytes at byte offset " +
                            std::to_string(offset) + " lie past its end: the file was truncated or changed while in "
                            "use, make it again");
        done += size_t(got);
    }
}

FileDigest write_file_atomically(const std::string& path, const std::vector<ByteSpan>& parts) {
    const std::string tmp = path + ".tmp";
    const auto fail = [&](const std::string& what, int err) {
        ::unlink(tmp.c_str());
        return DataError("cannot " + what + " (" + std::strerror(err) +
                         "): check free disk space and permissions");
    };
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw fail("create '" + tmp + "'", errno);
    FileDigest digest;
    Crc32c hash;
    for (const ByteSpan& part : parts) {
        hash.update(part.first, part.second);
        digest.bytes += part.second;
        const char* bytes = static_cast<const char*>(part.first);
        size_t done = 0;
        while (done < part.second) {
            const ssize_t put = ::write(fd, bytes + done, part.second - done);
            if (put < 0 && errno == EINTR) continue;
            if (put <= 0) {
                const int err = errno;
                ::close(fd);
                throw fail("write '" + tmp + "'", err);
            }
            done += size_t(put);
        }
    }
    if (::fsync(fd) != 0) {
        const int err = errno;
        ::close(fd);
        throw fail("fsync '" + tmp + "'", err);
    }
    if (::close(fd) != 0) throw fail("close '" + tmp + "'", errno);
    if (::rename(tmp.c_str(), path.c_str()) != 0) throw fail("rename '" + tmp + "' to '" + path + "'", errno);
    // The rename itself is durable only once the directory is synced.
    std::string dir = std::filesystem::path(path).parent_path().string();
    const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
    digest.crc32c = hash.value();
    return digest;
}

// Each thread reads its pieces and checksums them; the pieces' CRCs are then
// combined in order, so the value is the CRC-32C of the whole file.
FileDigest digest_file(const std::string& path) {
    constexpr uint64_t kPiece = uint64_t(8) << 20;
    const ReadOnlyFile file(path);
    const uint64_t pieces = (file.size() + kPiece - 1) / kPiece;
    std::vector<uint32_t> crcs(static_cast<size_t>(pieces));
    std::vector<std::string> errors(static_cast<size_t>(pieces));
#pragma omp parallel
    {
        std::vector<char> buf(size_t(std::min(kPiece, std::max<uint64_t>(file.size(), 1))));
#pragma omp for schedule(dynamic, 4)
        for (int64_t i = 0; i < int64_t(pieces); ++i) {
            const uint64_t at = uint64_t(i) * kPiece, n = std::min(kPiece, file.size() - at);
            try {
                file.read_at(at, buf.data(), size_t(n));
                crcs[size_t(i)] = crc32c(0, buf.data(), size_t(n));
            } catch (const std::exception& e) {
                errors[size_t(i)] = e.what();
            }
        }
    }
    FileDigest digest;
    digest.bytes = file.size();
    for (uint64_t i = 0; i < pieces; ++i) {
        if (!errors[size_t(i)].empty()) throw DataError(errors[size_t(i)]);
        digest.crc32c = crc32c_combine(digest.crc32c, crcs[size_t(i)], std::min(kPiece, file.size() - i * kPiece));
    }
    return digest;
}

uint64_t fnv1a_of_file(const std::string& path) {
    const ReadOnlyFile file(path);
    Fnv1a hash;
    std::vector<char> buf(size_t(1) << 20);
    for (uint64_t at = 0; at < file.size(); at += buf.size()) {
        const size_t n = size_t(std::min<uint64_t>(buf.size(), file.size() - at));
        file.read_at(at, buf.data(), n);
        hash.update(buf.data(), n);
    }
    return hash.value();
}

std::string read_small_file(const std::string& path, uint64_t max_bytes) {
    const ReadOnlyFile file(path);
    if (file.size() > max_bytes)
        throw DataError("'" + path + "' is " + std::to_string(file.size()) + " bytes, more than the " +
                        std::to_string(max_bytes) + " such a file can have: it is not the file expected there");
    std::string text(size_t(file.size()), '\0');
    file.read_at(0, text.data(), text.size());
    return text;
}

}  // namespace moe
