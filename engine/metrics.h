// Metrics for programs: one JSON object per line in the run directory.
#pragma once
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace moe {

class MetricsWriter {
public:
    explicit MetricsWriter(const std::string& path);
    ~MetricsWriter();
    MetricsWriter(const MetricsWriter&) = delete;
    MetricsWriter& operator=(const MetricsWriter&) = delete;

    // Writes {"k": v, ...} as one line and flushes it.
    void write(const std::vector<std::pair<std::string, double>>& fields);

private:
    std::FILE* file_ = nullptr;
};

}  // namespace moe
