#include "engine/io/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "engine/io/files.h"

namespace moe {

namespace {

// Parses one line, {"key": number-or-null, ...}; the reason it cannot, else empty.
std::string parse_metrics_line(const std::string& line, MetricsLine& out) {
    size_t i = 0;
    const auto skip_space = [&] {
        while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    };
    const auto take = [&](char c) {
        skip_space();
        if (i < line.size() && line[i] == c) {
            ++i;
            return true;
        }
        return false;
    };
    if (!take('{')) return "it does not start with '{'";
    if (!take('}')) {
        do {
            if (!take('"')) return "expected a quoted key at column " + std::to_string(i + 1);
            const size_t end = line.find('"', i);
            if (end == std::string::npos) return "a key is not closed";
            std::string key = line.substr(i, end - i);
            i = end + 1;
            if (!take(':')) return "expected ':' after \"" + key + "\"";
            skip_space();
            double value = 0;
            if (line.compare(i, 4, "null") == 0) {
                value = std::nan("");
                i += 4;
            } else {
                // A JSON number: strtod alone would also take nan, inf and hex.
                const char* start = line.c_str() + i;
                char* stop = nullptr;
                const bool numeric = *start == '-' || std::isdigit(static_cast<unsigned char>(*start));
                value = numeric ? std::strtod(start, &stop) : 0.0;
                if (!numeric || stop == start || !std::isfinite(value))
                    return "\"" + key + "\" has no finite number (metrics hold numbers and null)";
                i += size_t(stop - start);
            }
            out.emplace_back(std::move(key), value);
        } while (take(','));
        if (!take('}')) return "expected ',' or '}' at column " + std::to_string(i + 1);
    }
    skip_space();
    if (i != line.size()) return "text after the closing '}'";
    return "";
}

}  // namespace

namespace {

// The whole file, read through ReadOnlyFile (a FIFO or device is refused).
std::string read_all(const std::string& path) {
    const ReadOnlyFile file(path);
    std::string text(size_t(file.size()), '\0');
    file.read_at(0, text.data(), text.size());
    return text;
}

}  // namespace

std::vector<MetricsLine> read_metrics(const std::string& path) {
    const std::string text = read_all(path);
    std::vector<MetricsLine> lines;
    size_t start = 0;
    for (int number = 1;; ++number) {
        const size_t end = text.find('\n', start);
        if (end == std::string::npos) break;  // the rest is a line still being written
        const std::string line = text.substr(start, end - start);
        start = end + 1;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        MetricsLine fields;
        const std::string why = parse_metrics_line(line, fields);
        if (!why.empty())
            throw DataError("metrics file '" + path + "' line " + std::to_string(number) + " is not a metrics line (" +
                            why + "); it should read {\"step\": 1, \"loss\": 2.5, ...}");
        lines.push_back(std::move(fields));
    }
    return lines;
}

int truncate_metrics(const std::string& path, int last_step) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return 0;
    const std::string text = read_all(path);
    std::string kept;
    int malformed = 0;
    size_t start = 0;
    for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
        const std::string line = text.substr(start, end - start);
        MetricsLine fields;
        if (!parse_metrics_line(line, fields).empty() || fields.empty() || fields[0].first != "step") {
            malformed += line.find_first_not_of(" \t\r") != std::string::npos;
            continue;
        }
        if (last_step > 0 && fields[0].second <= last_step) kept += line + "\n";
    }
    malformed += start < text.size();  // a last line without its newline: cut off by a crash
    write_file_atomically(path, {{kept.data(), kept.size()}});
    return malformed;
}

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw DataError("cannot open metrics file '" + path + "': " + std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
    if (fd_ >= 0) ::close(fd_);
}

void MetricsWriter::write(const MetricsLine& fields) {
    std::string line = "{";
    char num[64];
    for (size_t i = 0; i < fields.size(); ++i) {
        const double v = fields[i].second;
        if (std::isfinite(v))
            std::snprintf(num, sizeof num, "%.17g", v);
        else
            std::snprintf(num, sizeof num, "null");  // JSON has no NaN
        line += (i ? ", \"" : "\"") + fields[i].first + "\": " + num;
    }
    line += "}\n";
    // A line is written whole or not at all: a write that fails part way (a
    // full disk) is cut back off, so the file stays readable.
    const off_t before = ::lseek(fd_, 0, SEEK_END);
    size_t done = 0;
    while (done < line.size()) {
        const ssize_t put = ::write(fd_, line.data() + done, line.size() - done);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) {
            const int err = put < 0 ? errno : EIO;
            if (before >= 0) (void)!::ftruncate(fd_, before);
            throw DataError("cannot append to metrics file '" + path_ + "' (" + std::strerror(err) +
                            "): the run stops; the file keeps every line before this one. Free disk space, then "
                            "continue with --resume auto");
        }
        done += size_t(put);
    }
}

}  // namespace moe
