#include "tools/raster.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <stdexcept>

namespace moe {

namespace {

// 5 x 9 glyphs, drawn as they look ('#' is ink): 7 rows above the baseline
// and 2 for descenders; digits, lower-case letters and the punctuation of
// chart labels and numbers.
struct Glyph {
    char ch;
    const char* rows[9];
};

const Glyph kFont[] = {
    {' ', {"     ", "     ", "     ", "     ", "     ", "     ", "     ", "     ", "     "}},
    {'0', {" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ", "     ", "     "}},
    {'1', {"  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ", "     ", "     "}},
    {'2', {" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####", "     ", "     "}},
    {'3', {"#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ", "     ", "     "}},
    {'4', {"   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ", "     ", "     "}},
    {'5', {"#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ", "     ", "     "}},
    {'6', {"  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ", "     ", "     "}},
    {'7', {"#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ", "     ", "     "}},
    {'8', {" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ", "     ", "     "}},
    {'9', {" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ", "     ", "     "}},
    {'a', {"     ", "     ", " ### ", "    #", " ####", "#   #", " ####", "     ", "     "}},
    {'b', {"#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#### ", "     ", "     "}},
    {'c', {"     ", "     ", " ### ", "#    ", "#    ", "#   #", " ### ", "     ", "     "}},
    {'d', {"    #", "    #", " ## #", "#  ##", "#   #", "#   #", " ####", "     ", "     "}},
    {'e', {"     ", "     ", " ### ", "#   #", "#####", "#    ", " ### ", "     ", "     "}},
    {'f', {"  ## ", " #  #", " #   ", "###  ", " #   ", " #   ", " #   ", "     ", "     "}},
    {'g', {"     ", "     ", " ####", "#   #", "#   #", "#   #", " ####", "    #", " ### "}},
    {'h', {"#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#   #", "     ", "     "}},
    {'i', {"  #  ", "     ", " ##  ", "  #  ", "  #  ", "  #  ", " ### ", "     ", "     "}},
    {'j', {"   # ", "     ", "  ## ", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "}},
    {'k', {"#    ", "#    ", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "     ", "     "}},
    {'l', {" ##  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ", "     ", "     "}},
    {'m', {"     ", "     ", "## # ", "# # #", "# # #", "#   #", "#   #", "     ", "     "}},
    {'n', {"     ", "     ", "# ## ", "##  #", "#   #", "#   #", "#   #", "     ", "     "}},
    {'o', {"     ", "     ", " ### ", "#   #", "#   #", "#   #", " ### ", "     ", "     "}},
    {'p', {"     ", "     ", "#### ", "#   #", "#   #", "#   #", "#### ", "#    ", "#    "}},
    {'q', {"     ", "     ", " ####", "#   #", "#   #", "#   #", " ####", "    #", "    #"}},
    {'r', {"     ", "     ", "# ## ", "##  #", "#    ", "#    ", "#    ", "     ", "     "}},
    {'s', {"     ", "     ", " ####", "#    ", " ### ", "    #", "#### ", "     ", "     "}},
    {'t', {" #   ", " #   ", "###  ", " #   ", " #   ", " #  #", "  ## ", "     ", "     "}},
    {'u', {"     ", "     ", "#   #", "#   #", "#   #", "#  ##", " ## #", "     ", "     "}},
    {'v', {"     ", "     ", "#   #", "#   #", "#   #", " # # ", "  #  ", "     ", "     "}},
    {'w', {"     ", "     ", "#   #", "#   #", "# # #", "# # #", " # # ", "     ", "     "}},
    {'x', {"     ", "     ", "#   #", " # # ", "  #  ", " # # ", "#   #", "     ", "     "}},
    {'y', {"     ", "     ", "#   #", "#   #", "#   #", "#   #", " ####", "    #", " ### "}},
    {'z', {"     ", "     ", "#####", "   # ", "  #  ", " #   ", "#####", "     ", "     "}},
    {'.', {"     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ", "     ", "     "}},
    {',', {"     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ", "  #  ", " #   "}},
    {':', {"     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     ", "     ", "     "}},
    {'-', {"     ", "     ", "     ", "#####", "     ", "     ", "     ", "     ", "     "}},
    {'+', {"     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     ", "     ", "     "}},
    {'=', {"     ", "     ", "#####", "     ", "#####", "     ", "     ", "     ", "     "}},
    {'/', {"     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     ", "     ", "     "}},
    {'(', {"   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # ", "     ", "     "}},
    {')', {" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   ", "     ", "     "}},
    {'%', {"##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##", "     ", "     "}},
    {'_', {"     ", "     ", "     ", "     ", "     ", "     ", "#####", "     ", "     "}},
    {'?', {" ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  ", "     ", "     "}},
};

const Glyph& glyph(char c) {
    const char lower = char(std::tolower(static_cast<unsigned char>(c)));
    for (const Glyph& g : kFont)
        if (g.ch == lower) return g;
    for (const Glyph& g : kFont)
        if (g.ch == '?') return g;
    throw std::logic_error("raster: the font has no '?'");
}

}  // namespace

Canvas::Canvas(int width, int height, Rgb background) : width_(width), height_(height) {
    if (width <= 0 || height <= 0)
        throw std::invalid_argument("canvas: " + std::to_string(width) + " x " + std::to_string(height) +
                                    " pixels; both must be positive");
    pixels_.resize(size_t(width) * size_t(height) * 3);
    for (size_t i = 0; i < pixels_.size(); i += 3) {
        pixels_[i] = background.r;
        pixels_[i + 1] = background.g;
        pixels_[i + 2] = background.b;
    }
}

Rgb Canvas::at(int x, int y) const {
    const uint8_t* p = &pixels_[(size_t(y) * size_t(width_) + size_t(x)) * 3];
    return {p[0], p[1], p[2]};
}

void Canvas::set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
    uint8_t* p = &pixels_[(size_t(y) * size_t(width_) + size_t(x)) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
}

void Canvas::fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = std::max(0, std::min(y0, y1)); y <= std::min(height_ - 1, std::max(y0, y1)); ++y)
        for (int x = std::max(0, std::min(x0, x1)); x <= std::min(width_ - 1, std::max(x0, x1)); ++x) set(x, y, c);
}

void Canvas::line(int x0, int y0, int x1, int y1, Rgb c, int thickness) {
    const int lo = -(thickness - 1) / 2, hi = thickness / 2;
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
        fill_rect(x0 + lo, y0 + lo, x0 + hi, y0 + hi, c);
        if (x0 == x1 && y0 == y1) break;
        const int e2 = 2 * err;
        if (e2 >= dy) {
            err += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            err += dx;
            y0 += sy;
        }
    }
}

void Canvas::text(int x, int y, const std::string& s, Rgb c, int scale) {
    for (size_t i = 0; i < s.size(); ++i) {
        const Glyph& g = glyph(s[i]);
        const int gx = x + int(i) * 6 * scale;
        for (int row = 0; row < 9; ++row)
            for (int col = 0; col < 5; ++col)
                if (g.rows[row][col] == '#')
                    fill_rect(gx + col * scale, y + row * scale, gx + (col + 1) * scale - 1,
                              y + (row + 1) * scale - 1, c);
    }
}

int Canvas::text_width(const std::string& s, int scale) { return s.empty() ? 0 : (int(s.size()) * 6 - 1) * scale; }

}  // namespace moe
