#include "engine/io/metrics.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
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

std::vector<MetricsLine> read_metrics(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw DataError("cannot read metrics file '" + path + "': " + std::strerror(errno));
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
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

void truncate_metrics(const std::string& path, int last_step) {
    std::ifstream in(path);
    if (!in) return;
    std::string kept, line;
    while (std::getline(in, line)) {
        double step = 0;
        if (last_step > 0 && std::sscanf(line.c_str(), "{\"step\": %lf", &step) == 1 && step <= last_step)
            kept += line + "\n";
    }
    write_file_atomically(path, {{kept.data(), kept.size()}});
}

MetricsWriter::MetricsWriter(const std::string& path) {
    file_ = std::fopen(path.c_str(), "a");
    if (!file_) throw std::runtime_error("cannot open metrics file '" + path + "': " + std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
    if (file_) std::fclose(file_);
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
    std::fputs(line.c_str(), file_);
    std::fflush(file_);
}

}  // namespace moe
