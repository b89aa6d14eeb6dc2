// Metrics for programs: one JSON object per line in the run directory.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace moe {

// A metric: a number, a list of numbers, or a table (a list of lists, e.g.
// [layer][expert]). Non-finite numbers are written as null and read as NaN.
struct MetricValue {
    int depth = 0;                          // 0: a number, 1: a list, 2: a table
    std::vector<std::vector<double>> rows;  // a number is one row of one, a list one row

    MetricValue(double number = 0) : rows{{number}} {}
    MetricValue(std::vector<double> list) : depth(1), rows{std::move(list)} {}
    MetricValue(std::vector<std::vector<double>> table) : depth(2), rows(std::move(table)) {}

    // The number (NaN for a list or table).
    double number() const;
    bool operator==(const MetricValue& o) const { return depth == o.depth && rows == o.rows; }
};

// One line of a metrics file: its fields in order.
using MetricsLine = std::vector<std::pair<std::string, MetricValue>>;

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

    // Appends {"k": v, ...} as one line. Numbers in full (%.17g), so a resumed
    // run's losses can be compared bit for bit; the numbers of lists and tables
    // (telemetry) to 6 significant digits, whole numbers exactly, to keep the
    // lines short. A line that cannot be written whole (a full disk) is removed
    // again and DataError says so.
    void write(const MetricsLine& fields);

private:
    std::string path_;
    int fd_ = -1;
};

}  // namespace moe
