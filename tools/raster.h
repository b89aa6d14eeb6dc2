// An RGB picture to draw charts on: rectangles, lines, and text in a 5 x 9
// bitmap font (7 rows and 2 for descenders), all on whole pixels (no anti-aliasing), so what a test expects
// at a pixel is exactly what is there.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

struct Rgb {
    uint8_t r = 0, g = 0, b = 0;
    bool operator==(const Rgb& o) const { return r == o.r && g == o.g && b == o.b; }
    bool operator!=(const Rgb& o) const { return !(*this == o); }
};

class Canvas {
public:
    // width x height pixels of `background`.
    Canvas(int width, int height, Rgb background);

    int width() const { return width_; }
    int height() const { return height_; }
    // Rows top to bottom, 3 bytes a pixel.
    const std::vector<uint8_t>& pixels() const { return pixels_; }
    Rgb at(int x, int y) const;

    // Drawing clips to the canvas.
    void set(int x, int y, Rgb c);
    void fill_rect(int x0, int y0, int x1, int y1, Rgb c);  // inclusive corners
    // A line `thickness` pixels wide (a square pen along Bresenham's line).
    void line(int x0, int y0, int x1, int y1, Rgb c, int thickness = 1);
    // Text with its top-left corner at (x, y), each font pixel scale x scale.
    // Letters print in lower case; a character the font lacks prints as '?'.
    void text(int x, int y, const std::string& s, Rgb c, int scale = 1);

    // The size text() gives a string: 6 font columns a character (5 and a
    // space, none after the last) and 9 rows, times scale.
    static int text_width(const std::string& s, int scale = 1);
    static int text_height(int scale = 1) { return 9 * scale; }

private:
    int width_, height_;
    std::vector<uint8_t> pixels_;
};

}  // namespace moe
