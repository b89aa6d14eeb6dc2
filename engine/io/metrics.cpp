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

// A cursor over one line of text: the grammar of metrics lines,
// {"key": value, ...} where a value is a number, null, a list of them, or a
// list of such lists.
class LineParser {
public:
    explicit LineParser(const std::string& line) : line_(line) {}

    // The line's fields; the reason it is not a metrics line, else empty.
    std::string parse(MetricsLine& out) {
        if (!take('{')) return "it does not start with '{'";
        if (!take('}')) {
            do {
                if (!take('"')) return "expected a quoted key at column " + column();
                const size_t end = line_.find('"', i_);
                if (end == std::string::npos) return "a key is not closed";
                std::string key = line_.substr(i_, end - i_);
                i_ = end + 1;
                if (!take(':')) return "expected ':' after \"" + key + "\"";
                MetricValue value;
                const std::string why = parse_value(value, 0);
                if (!why.empty()) return "\"" + key + "\" " + why;
                out.emplace_back(std::move(key), std::move(value));
            } while (take(','));
            if (!take('}')) return "expected ',' or '}' at column " + column();
        }
        skip_space();
        if (i_ != line_.size()) return "text after the closing '}'";
        return "";
    }

private:
    // A number or null, or at depth 0 and 1 a list of values one level deeper.
    std::string parse_value(MetricValue& value, int depth) {
        skip_space();
        if (depth < 2 && take('[')) {
            std::vector<MetricValue> items;
            if (!take(']')) {
                do {
                    items.emplace_back();
                    const std::string why = parse_value(items.back(), depth + 1);
                    if (!why.empty()) return why;
                } while (take(','));
                if (!take(']')) return "has a list without its ']' at column " + column();
            }
            return list_of(items, value);
        }
        double number = 0;
        if (!parse_number(number)) return "has no finite number at column " + column() + " (metrics hold numbers, null and lists of them)";
        value = MetricValue(number);
        return "";
    }

    // The list of items: of numbers, or of lists of numbers, not mixed.
    static std::string list_of(const std::vector<MetricValue>& items, MetricValue& value) {
        const int depth = items.empty() ? 0 : items[0].depth;
        for (const MetricValue& item : items)
            if (item.depth != depth) return "mixes numbers and lists in a list";
        if (depth == 0) {
            std::vector<double> list;
            for (const MetricValue& item : items) list.push_back(item.number());
            value = MetricValue(std::move(list));
        } else {
            std::vector<std::vector<double>> table;
            for (const MetricValue& item : items) table.push_back(item.rows[0]);
            value = MetricValue(std::move(table));
        }
        return "";
    }

    bool parse_number(double& value) {
        if (line_.compare(i_, 4, "null") == 0) {
            value = std::nan("");
            i_ += 4;
            return true;
        }
        // A JSON number: strtod alone would also take nan, inf and hex.
        const char* start = line_.c_str() + i_;
        if (*start != '-' && !std::isdigit(static_cast<unsigned char>(*start))) return false;
        char* stop = nullptr;
        value = std::strtod(start, &stop);
        if (stop == start || !std::isfinite(value)) return false;
        i_ += size_t(stop - start);
        return true;
    }

    void skip_space() {
        while (i_ < line_.size() && std::isspace(static_cast<unsigned char>(line_[i_]))) ++i_;
    }
    bool take(char c) {
        skip_space();
        if (i_ < line_.size() && line_[i_] == c) {
            ++i_;
            return true;
        }
        return false;
    }
    std::string column() const { return std::to_string(i_ + 1); }

    const std::string& line_;
    size_t i_ = 0;
};

std::string parse_metrics_line(const std::string& line, MetricsLine& out) { return LineParser(line).parse(out); }

// A number as a field: in full, so it reads back bit for bit.
std::string full_number(double v) {
    if (!std::isfinite(v)) return "null";  // JSON has no NaN
    char num[32];
    std::snprintf(num, sizeof num, "%.17g", v);
    return num;
}

// A number in a list: whole numbers exactly, others to 6 digits.
std::string short_number(double v) {
    if (!std::isfinite(v)) return "null";
    char num[32];
    if (v == std::floor(v) && std::fabs(v) < 1e15)
        std::snprintf(num, sizeof num, "%.0f", v);
    else
        std::snprintf(num, sizeof num, "%.6g", v);
    return num;
}

std::string list_text(const std::vector<double>& list) {
    std::string out = "[";
    for (size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + short_number(list[i]);
    return out + "]";
}

std::string value_text(const MetricValue& v) {
    if (v.depth == 0) return full_number(v.number());
    if (v.depth == 1) return list_text(v.rows[0]);
    std::string out = "[";
    for (size_t i = 0; i < v.rows.size(); ++i) out += (i ? ", " : "") + list_text(v.rows[i]);
    return out + "]";
}

}  // namespace

double MetricValue::number() const { return depth == 0 ? rows[0][0] : std::nan(""); }

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
        if (!parse_metrics_line(line, fields).empty() || fields.empty() || fields[0].first != "step" ||
            fields[0].second.depth != 0) {
            malformed += line.find_first_not_of(" \t\r") != std::string::npos;
            continue;
        }
        if (last_step > 0 && fields[0].second.number() <= last_step) kept += line + "\n";
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
    for (size_t i = 0; i < fields.size(); ++i)
        line += (i ? ", \"" : "\"") + fields[i].first + "\": " + value_text(fields[i].second);
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
