#include "engine/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "engine/shards.h"

namespace moe {

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

void MetricsWriter::write(const std::vector<std::pair<std::string, double>>& fields) {
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
