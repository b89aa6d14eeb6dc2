// Metrics for programs: one JSON object per line in the run directory.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace moe {

// One line of a metrics file: its fields in order; null (a NaN or infinity
// when written) reads as NaN.
using MetricsLine = std::vector<std::pair<std::string, double>>;

// The lines of a metrics file. A malformed line throws DataError naming the
// file and the line; a last line without its newline (still being written)
// is left out.
std::vector<MetricsLine> read_metrics(const std::string& path);

// Keeps the lines of an existing metrics file up to step last_step: a resumed
// run drops what its predecessor logged after the checkpoint; 0 empties it.
// Lines that are not whole metrics lines (cut off by a crash) are dropped
// too; returns how many.
int truncate_metrics(const std::string& path, int last_step);

class MetricsWriter {
public:
    explicit MetricsWriter(const std::string& path);
    ~MetricsWriter();
    MetricsWriter(const MetricsWriter&) = delete;
    MetricsWriter& operator=(const MetricsWriter&) = delete;

    // Appends {"k": v, ...} as one line; doubles in full (%.17g), so a resumed
    // run's losses can be compared bit for bit. A line that cannot be written
    // whole (a full disk) is removed again and DataError says so.
    void write(const MetricsLine& fields);

private:
    std::string path_;
    int fd_ = -1;
};

}  // namespace moe
