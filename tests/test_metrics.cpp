// Metrics files (io/metrics): lines read back as written, a bad line named;
// a line that cannot be written whole is removed and the run stops; a line
// cut off by a crash is dropped on resume, so the file always parses.
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "engine/io/files.h"
#include "engine/io/metrics.h"
#include "engine/train/trainer.h"
#include "kernels/cpu/cpu_ops.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tests/train_fixture.h"

using namespace moe;
using moe::test::contains;

namespace {

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::string read_text(const std::string& path) { return read_small_file(path, 1 << 20); }

}  // namespace

TEST_CASE("metrics files read back as written, and a bad line is named", "[unit]") {
    const std::string dir = moe::test::fresh_dir("plot", "reader");
    const std::string path = dir + "/metrics.jsonl";
    {
        MetricsWriter w(path);
        w.write({{"step", 1}, {"loss", 0.1 + 0.2}, {"lr", 3e-4}});
        w.write({{"step", 2}, {"loss", std::nan("")}, {"grad_norm", INFINITY}});
        w.write({});
    }
    std::vector<MetricsLine> lines = read_metrics(path);
    REQUIRE(lines.size() == 3);
    CHECK(lines[0] == MetricsLine{{"step", 1}, {"loss", 0.1 + 0.2}, {"lr", 3e-4}});  // every bit
    REQUIRE(lines[1].size() == 3);
    CHECK(std::isnan(lines[1][1].second.number()));
    CHECK(std::isnan(lines[1][2].second.number()));
    CHECK(lines[2].empty());

    // Spaces anywhere, blank lines, and a last line still being written.
    write_text(path, " { \"step\" :3 ,\"val_loss\":  2.5e0 }\n\n{\"step\": 4, \"loss\": 1");
    lines = read_metrics(path);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == MetricsLine{{"step", 3}, {"val_loss", 2.5}});

    for (const std::string bad : {"[1, 2]", "{\"step\": 1 \"loss\": 2}", "{\"step\": \"one\"}", "{\"step\": 1} x",
                                  "{step: 1}", "{\"step\" 1}"}) {
        CAPTURE(bad);
        write_text(path, "{\"step\": 1}\n" + bad + "\n");
        const std::string msg = moe::test::error_of<DataError>([&] { read_metrics(path); });
        CHECK(contains(msg, path));
        CHECK(contains(msg, "line 2"));
    }
    CHECK(contains(moe::test::error_of<DataError>([&] { read_metrics(dir + "/none.jsonl"); }), "none.jsonl"));
}

TEST_CASE("lists and tables in metrics lines: whole numbers exact, others to 6 digits", "[unit]") {
    const std::string path = moe::test::fresh_dir("metrics", "tables") + "/metrics.jsonl";
    {
        MetricsWriter w(path);
        w.write({{"step", 7},
                 {"share", std::vector<std::vector<double>>{{0.25, 1.0 / 3}, {123456789012.0, std::nan("")}}},
                 {"slots", std::vector<double>{1024, -3, 2.5e-9}},
                 {"none", std::vector<double>{}}});
    }
    CHECK(read_text(path) ==
          "{\"step\": 7, \"share\": [[0.25, 0.333333], [123456789012, null]], \"slots\": [1024, -3, 2.5e-09], "
          "\"none\": []}\n");
    const std::vector<MetricsLine> lines = read_metrics(path);
    REQUIRE(lines.size() == 1);
    REQUIRE(lines[0].size() == 4);
    const MetricValue& share = lines[0][1].second;
    REQUIRE(share.depth == 2);
    CHECK(share.rows[0] == std::vector<double>{0.25, 0.333333});
    CHECK(share.rows[1][0] == 123456789012.0);
    CHECK(std::isnan(share.rows[1][1]));
    CHECK(std::isnan(share.number()));  // a table is no number
    CHECK(lines[0][2].second == MetricValue(std::vector<double>{1024, -3, 2.5e-9}));
    CHECK(lines[0][3].second.depth == 1);
    CHECK(lines[0][3].second.rows[0].empty());

    for (const std::string bad : {"{\"a\": [1, [2]]}", "{\"a\": [[[1]]]}", "{\"a\": [1, 2}", "{\"a\": [1,, 2]}",
                                  "{\"a\": [nan]}"}) {
        CAPTURE(bad);
        write_text(path, bad + "\n");
        const std::string msg = moe::test::error_of<DataError>([&] { read_metrics(path); });
        CHECK(contains(msg, "line 1"));
        CHECK(contains(msg, "\"a\""));
    }
}

TEST_CASE("a metrics line that cannot be written whole is removed, and the writer says why", "[unit]") {
    const std::string path = moe::test::fresh_dir("metrics", "full-disk") + "/metrics.jsonl";
    MetricsWriter w(path);
    std::string message;
    int written = 0;
    {
        const moe::test::FileSizeLimit full_disk(500);  // a line is about 60 bytes: one is cut part way
        try {
            for (; written < 100; ++written) w.write({{"step", written + 1}, {"loss", 1.0 / 3}, {"lr", 3e-4}});
        } catch (const DataError& e) {
            message = e.what();
        }
    }
    REQUIRE(written > 1);
    REQUIRE(written < 100);
    CHECK(contains(message, "cannot append to metrics file '" + path + "' (File too large)"));
    CHECK(contains(message, "keeps every line before this one"));
    const std::string text = read_text(path);
    CHECK(text.back() == '\n');  // no part of the failed line is left
    REQUIRE(read_metrics(path).size() == size_t(written));
}

TEST_CASE("a run whose metrics cannot be written stops with the reason, and its file still parses", "[unit]") {
    CpuOps ops;
    Config c = moe::test::small_config("metrics-full-disk");
    c.train.steps = 40;
    c.eval.every = 0;
    std::string message;
    {
        // config.yaml fits; metrics.jsonl fills after some steps.
        const moe::test::FileSizeLimit full_disk(2500);
        message = moe::test::error_of<DataError>([&] { train(c, ops); });
    }
    CHECK(contains(message, "cannot append to metrics file '" + c.run.out_dir + "/metrics.jsonl'"));
    CHECK(contains(message, "--resume auto"));
    const std::vector<MetricsLine> lines = read_metrics(c.run.out_dir + "/metrics.jsonl");
    REQUIRE(lines.size() > 2);
    REQUIRE(lines.size() < 40);
    int step_lines = 0;  // beside them, the expert telemetry of the first step
    for (const MetricsLine& line : lines) step_lines += line.size() > 1 && line[1].first == "loss";
    CHECK(lines.back()[0].first == "step");
    CHECK(lines.back()[0].second.number() == double(step_lines));
}

TEST_CASE("a resumed run's metrics drop lines after its checkpoint and lines cut off by a crash", "[unit]") {
    const std::string path = moe::test::fresh_dir("metrics", "truncate") + "/metrics.jsonl";
    write_text(path,
               "{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"loss\": 1.5}\n{\"step\": 2, \"val_loss\": 1.6}\n"
               "{\"step\": 3, \"lo\n{\"step\": 3, \"loss\": 1.4}\n{\"step\": 4, \"loss\": 1.3}\n{\"step\": 5, \"l");
    REQUIRE(truncate_metrics(path, 3) == 2);  // the line cut mid-way and the unfinished last one
    CHECK(read_text(path) == "{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"loss\": 1.5}\n{\"step\": 2, \"val_loss\": 1.6}\n"
                             "{\"step\": 3, \"loss\": 1.4}\n");
    CHECK(read_metrics(path).size() == 4);
    REQUIRE(truncate_metrics(path, 0) == 0);
    CHECK(read_text(path).empty());
}
