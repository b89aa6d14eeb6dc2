// moe-plot and its pieces: the canvas and its font, the PNG encoding (decoded
// here with zlib and compared pixel for pixel), nice ticks and their labels,
// a panel's data at the pixels it maps to, the metrics reader, and the tool
// run as a process on good and bad input.
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/io/metrics.h"
#include "engine/io/files.h"
#include "tests/catch.h"
#include "tests/test_util.h"
#include "tools/chart.h"
#include "tools/png_writer.h"
#include "tools/raster.h"

using namespace moe;
using moe::test::contains;

namespace {

const Rgb kWhite{255, 255, 255}, kRed{200, 0, 0}, kBlue{0, 0, 200};

uint32_t be32(const std::string& s, size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | uint8_t(s[at + i]);
    return v;
}

struct DecodedPng {
    uint32_t width = 0, height = 0;
    std::string header;             // IHDR's 13 bytes
    std::vector<uint8_t> pixels;    // RGB rows, filters undone
    std::vector<std::string> types;  // chunk types in order
};

// Splits the file into chunks (checking each CRC), inflates the IDAT data and
// undoes the row filters PNG defines for "none" and "up".
DecodedPng decode_png(const std::string& file) {
    REQUIRE(file.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);
    DecodedPng d;
    std::string idat;
    for (size_t at = 8; at < file.size();) {
        REQUIRE(at + 12 <= file.size());
        const uint32_t n = be32(file, at);
        const std::string body = file.substr(at + 4, 4 + n);
        REQUIRE(be32(file, at + 8 + n) == uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(body.data()), uInt(body.size()))));
        const std::string type = body.substr(0, 4), data = body.substr(4);
        d.types.push_back(type);
        if (type == "IHDR") d.header = data;
        if (type == "IDAT") idat += data;
        at += 12 + n;
    }
    REQUIRE(d.header.size() == 13);
    d.width = be32(d.header, 0);
    d.height = be32(d.header, 4);
    const size_t stride = size_t(d.width) * 3;
    std::vector<uint8_t> raw((stride + 1) * d.height);
    uLongf raw_size = uLongf(raw.size());
    REQUIRE(uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(idat.data()), uLong(idat.size())) == Z_OK);
    REQUIRE(raw_size == raw.size());
    d.pixels.resize(stride * d.height);
    for (size_t y = 0; y < d.height; ++y) {
        const uint8_t filter = raw[y * (stride + 1)];
        REQUIRE((filter == 0 || filter == 2));
        for (size_t i = 0; i < stride; ++i) {
            const uint8_t above = filter == 2 && y ? d.pixels[(y - 1) * stride + i] : 0;
            d.pixels[y * stride + i] = uint8_t(raw[y * (stride + 1) + 1 + i] + above);
        }
    }
    return d;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Whether the pixel at (x, y) or one next to it has colour c: a line passes
// within a pixel of its exact course.
bool near(const Canvas& canvas, int x, int y, Rgb c) {
    for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx)
            if (canvas.at(x + dx, y + dy) == c) return true;
    return false;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

}  // namespace

TEST_CASE("the canvas draws rectangles, clipped lines and the font's glyphs", "[unit]") {
    Canvas c(40, 20, kWhite);
    c.fill_rect(3, 4, 1, 2, kRed);  // corners in either order
    CHECK(c.at(1, 2) == kRed);
    CHECK(c.at(3, 4) == kRed);
    CHECK(c.at(4, 4) == kWhite);

    c.line(-10, -10, 12, 12, kBlue);  // starts off the canvas
    CHECK(c.at(0, 0) == kBlue);
    CHECK(c.at(12, 12) == kBlue);
    CHECK(c.at(13, 13) == kWhite);
    c.line(20, 0, 20, 0, kBlue, 3);  // a point, 3 pixels square
    CHECK(c.at(19, 0) == kBlue);
    CHECK(c.at(21, 1) == kBlue);
    CHECK(c.at(22, 1) == kWhite);

    // '1' has ink in its third column on the top row, none in the first.
    Canvas t(30, 20, kWhite);
    t.text(0, 0, "1", kRed);
    CHECK(t.at(2, 0) == kRed);
    CHECK(t.at(0, 0) == kWhite);
    t.text(10, 0, "1", kRed, 2);  // each font pixel 2 x 2
    CHECK(t.at(14, 0) == kRed);
    CHECK(t.at(15, 1) == kRed);
    CHECK(t.at(16, 0) == kWhite);
    // Capitals print as small letters; a character the font lacks, as '?'.
    Canvas upper(12, 9, kWhite), lower(12, 9, kWhite), unknown(6, 9, kWhite), question(6, 9, kWhite);
    upper.text(0, 0, "Ab", kRed);
    lower.text(0, 0, "ab", kRed);
    unknown.text(0, 0, "#", kRed);
    question.text(0, 0, "?", kRed);
    CHECK(upper.pixels() == lower.pixels());
    CHECK(unknown.pixels() == question.pixels());
    CHECK(lower.pixels() != Canvas(12, 9, kWhite).pixels());
    CHECK(Canvas::text_width("abc", 2) == (3 * 6 - 1) * 2);
    CHECK(Canvas::text_width("") == 0);
}

TEST_CASE("a PNG file holds the canvas pixel for pixel", "[unit]") {
    // Odd sizes, every channel value, flat areas and noise.
    Canvas c(37, 23, {10, 20, 30});
    for (int y = 0; y < c.height(); ++y)
        for (int x = 0; x < c.width(); ++x)
            if ((x * 7 + y * 13) % 5 == 0) c.set(x, y, {uint8_t(x * 7), uint8_t(y * 11), uint8_t(x * y)});
    c.text(2, 2, "loss 0.25", kRed);
    const DecodedPng d = decode_png(encode_png(c));
    CHECK(d.width == 37);
    CHECK(d.height == 23);
    CHECK(d.header.substr(8) == std::string("\x08\x02\x00\x00\x00", 5));  // 8-bit RGB, no interlace
    CHECK(d.types == std::vector<std::string>{"IHDR", "IDAT", "IEND"});
    CHECK(d.pixels == c.pixels());
}

TEST_CASE("ticks are nice numbers covering the range, labelled as short as the step allows", "[unit]") {
    const std::vector<double> t = nice_ticks(0.013, 0.097, 5);
    REQUIRE(t.size() >= 2);
    CHECK(t.size() <= 6);
    CHECK(t.front() <= 0.013);
    CHECK(t.back() >= 0.097);
    CHECK(t[1] - t[0] == Approx(0.02));
    for (size_t i = 1; i < t.size(); ++i) CHECK(t[i] - t[i - 1] == Approx(t[1] - t[0]));

    CHECK(nice_ticks(0, 8000, 6) == std::vector<double>{0, 2000, 4000, 6000, 8000});
    const std::vector<double> one = nice_ticks(3, 3, 5);  // a single value gets a range around it
    CHECK(one.front() < 3);
    CHECK(one.back() > 3);
    const std::vector<double> zero = nice_ticks(0, 0, 5);
    CHECK(zero.front() < 0);
    CHECK(zero.back() > 0);

    // Values far beyond their spread (no double between first and first + 1
    // at that scale) still give a few ticks, and quickly.
    const std::vector<double> far = nice_ticks(1e18, 1e18 + 4096, 5);
    CHECK(far.size() >= 2);
    CHECK(far.size() <= 7);
    CHECK(nice_ticks(-1e308, 1e308, 5).size() == 2);

    CHECK(tick_label(0, 0.5) == "0");
    CHECK(tick_label(0.25, 0.05) == "0.25");
    CHECK(tick_label(2.5, 0.5) == "2.5");
    CHECK(tick_label(100, 20) == "100");
    CHECK(tick_label(3e-4, 1e-4) == "3e-04");
    CHECK(tick_label(2.5e-4, 5e-5) == "2.5e-04");
    CHECK(tick_label(12000, 2000) == "12k");
    CHECK(tick_label(1500, 500) == "1500");
    CHECK(tick_label(1.5e6, 5e5) == "1.5M");
    CHECK(tick_label(-0.5, 0.5) == "-0.5");
}

TEST_CASE("a trailing mean smooths over the last finite values, NaNs left as they are", "[unit]") {
    const std::vector<std::pair<double, double>> raw = {{1, 1}, {2, 2}, {3, 3}, {4, std::nan("")}, {5, 5}, {7, 9}};
    const auto two = trailing_mean(raw, 2);
    REQUIRE(two.size() == raw.size());
    for (size_t i = 0; i < raw.size(); ++i) CHECK(two[i].first == raw[i].first);
    CHECK(two[0].second == 1);
    CHECK(two[1].second == 1.5);
    CHECK(two[2].second == 2.5);
    CHECK(std::isnan(two[3].second));
    CHECK(two[4].second == 4);  // 3 and 5: the NaN counts for nothing
    CHECK(two[5].second == 7);
    const auto one = trailing_mean(raw, 1);
    CHECK(one[5].second == 9);
    CHECK(trailing_mean(raw, 100)[5].second == Approx((1 + 2 + 3 + 5 + 9) / 5.0));
}

TEST_CASE("a panel draws its series at the pixels their points map to", "[unit]") {
    Canvas c(400, 300, kWhite);
    Panel p{"loss", {}};
    p.series.push_back({"train", kRed, {{0, 1}, {10, 3}}, false});
    p.series.push_back({"", kBlue, {{2, 2.5}, {4, std::nan("")}, {6, 1.5}}, true});
    const PlotArea a = draw_panel(c, 10, 10, 390, 290, p, 0, 10);
    CHECK(a.y_lo <= 1);
    CHECK(a.y_hi >= 3);
    CHECK(a.left > 10);
    CHECK(a.bottom < 290);
    CHECK(a.px(0) == a.left);
    CHECK(a.px(10) == a.right);
    // The line's middle, and the markers (a NaN value has none).
    CHECK(near(c, a.px(5), a.py(2), kRed));
    CHECK(c.at(a.px(2), a.py(2.5)) == kBlue);
    CHECK(c.at(a.px(6), a.py(1.5)) == kBlue);
    CHECK(c.at(a.px(4), a.py(2.0) - 20) != kBlue);
    // A NaN breaks a line: nothing is drawn between (1, 1) and (3, 1).
    Canvas g(400, 300, kWhite);
    Panel gap{"gap", {{"", kRed, {{0, 0}, {1, 1}, {2, std::nan("")}, {3, 1}, {4, 0}}, false}}};
    const PlotArea ga = draw_panel(g, 10, 10, 390, 290, gap, 0, 4);
    CHECK(near(g, ga.px(0.5), ga.py(0.5), kRed));
    CHECK(near(g, ga.px(3.5), ga.py(0.5), kRed));
    CHECK(!near(g, ga.px(2), ga.py(1), kRed));
}

TEST_CASE("moe-plot draws runs into a PNG and refuses bad input with one line", "[unit]") {
    const std::string dir = moe::test::fresh_dir("plot", "tool");
    const std::string a = dir + "/cpu", b = dir + "/gpu";
    for (const std::string& run : {a, b}) {
        std::filesystem::create_directories(run);
        MetricsWriter w(run + "/metrics.jsonl");
        for (int s = 1; s <= 20; ++s) {
            w.write({{"step", s}, {"loss", 5.0 / s + (run == b ? 0.01 : 0)}, {"lr", 3e-4 * s / 20},
                     {"grad_norm", 1.0 / s}, {"tokens_per_s", 12000}, {"aux", 0}, {"dropped", 0}});
            if (s % 10 == 0 && run == a) w.write({{"step", s}, {"val_loss", 4.0 / s}});
            if (s % 10 == 0 && run == b) w.write({{"step", s}, {"val_loss", 4.0 / s}, {"val_bpb", 6.0 / s}});
        }
    }
    // One run: metrics.png in its directory.
    moe::test::ProgramResult r = moe::test::run_program(MOE_PLOT_TOOL, {a});
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(contains(r.output, a + "/metrics.png"));
    CHECK(contains(r.output, "steps 1 to 20, 4 charts"));  // loss, lr, grad norm, tokens/s: aux and drops are 0
    DecodedPng d = decode_png(read_file(a + "/metrics.png"));
    CHECK(d.width == 1600);
    CHECK(d.height == 1200);

    // Two runs over each other, a size, steps from 5, smoothed, a file name.
    r = moe::test::run_program(MOE_PLOT_TOOL, {a, b + "/metrics.jsonl", "-o", dir + "/both.png", "--size", "800x600",
                                               "--from", "5", "--smooth", "4"});
    REQUIRE(r.exit_code == 0);
    CHECK(contains(r.output, "2 run(s), steps 5 to 20, 5 charts"));  // and the gpu run's bits per byte
    d = decode_png(read_file(dir + "/both.png"));
    CHECK(d.width == 800);
    CHECK(d.height == 600);

    const auto refused = [&](const std::vector<std::string>& args, const std::string& why) {
        const moe::test::ProgramResult bad = moe::test::run_program(MOE_PLOT_TOOL, args);
        INFO(bad.output);
        CHECK(bad.exit_code == 2);
        CHECK(contains(bad.output, "moe-plot: "));
        CHECK(contains(bad.output, why));
    };
    refused({dir + "/missing"}, "no metrics at '" + dir + "/missing'");
    refused({dir}, "no metrics at '" + dir + "/metrics.jsonl'");
    refused({a, "--from", "21"}, "no run has a step at or after --from 21");
    refused({a, "--size", "10x10"}, "--size takes WIDTHxHEIGHT");
    refused({a, "--smooth", "0"}, "--smooth takes an integer >= 1");
    refused({}, "a run directory or metrics file is required");
    refused({a, "-o", dir}, "choose another file with -o");
    write_text(dir + "/empty.jsonl", "");
    refused({dir + "/empty.jsonl"}, "has no steps yet");
    write_text(dir + "/broken.jsonl", "{\"step\": 1}\n{\"step\": 2, \"loss\": nan}\n");
    refused({dir + "/broken.jsonl"}, "line 2");
    CHECK(!std::filesystem::exists(dir + "/broken.png"));
    CHECK(std::filesystem::is_directory(dir));  // -o DIR left the directory as it was
}
