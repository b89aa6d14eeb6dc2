#include "engine/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace moe {

MetricsWriter::MetricsWriter(const std::string& path) {
    file_ = std::fopen(path.c_str(), "a");
    if (!file_) throw std::runtime_error("cannot open metrics file '" + path + "': " + std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
    if (file_) std::fclose(file_);
}

void MetricsWriter::write(const std::vector<std::pair<std::string, double>>& fields) {
    std::string line = "{";
    char num[64];
    for (size_t i = 0; i < fields.size(); ++i) {
        const double v = fields[i].second;
        if (std::isfinite(v))
            std::snprintf(num, sizeof num, "%.9g", v);
        else
            std::snprintf(num, sizeof num, "null");  // JSON has no NaN
        line += (i ? ", \"" : "\"") + fields[i].first + "\": " + num;
    }
    line += "}\n";
    std::fputs(line.c_str(), file_);
    std::fflush(file_);
}

}  // namespace moe
