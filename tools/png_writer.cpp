#include "tools/png_writer.h"

#include <zlib.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace moe {

namespace {

void put_u32(std::string& out, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(char((v >> shift) & 0xff));
}

// A chunk: length, type, data, and the CRC-32 of type and data.
void put_chunk(std::string& out, const char* type, const std::string& data) {
    put_u32(out, uint32_t(data.size()));
    const std::string body = std::string(type, 4) + data;
    out += body;
    put_u32(out, uint32_t(crc32(0L, reinterpret_cast<const Bytef*>(body.data()), uInt(body.size()))));
}

}  // namespace

std::string encode_png(const Canvas& canvas) {
    const int w = canvas.width(), h = canvas.height();
    const size_t stride = size_t(w) * 3;
    const std::vector<uint8_t>& px = canvas.pixels();
    // Each row: filter byte 2 (up), then each byte less the one above it.
    std::vector<uint8_t> filtered((stride + 1) * size_t(h));
    for (size_t y = 0; y < size_t(h); ++y) {
        uint8_t* row = &filtered[y * (stride + 1)];
        row[0] = 2;
        for (size_t i = 0; i < stride; ++i)
            row[1 + i] = uint8_t(px[y * stride + i] - (y ? px[(y - 1) * stride + i] : 0));
    }
    uLongf packed_size = compressBound(uLong(filtered.size()));
    std::string packed(packed_size, '\0');
    if (compress2(reinterpret_cast<Bytef*>(&packed[0]), &packed_size, filtered.data(), uLong(filtered.size()),
                  Z_BEST_COMPRESSION) != Z_OK)
        throw std::runtime_error("png: zlib could not compress the image");
    packed.resize(packed_size);

    std::string ihdr;
    put_u32(ihdr, uint32_t(w));
    put_u32(ihdr, uint32_t(h));
    ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, adaptive filters, no interlace
    std::string out("\x89PNG\r\n\x1a\n", 8);
    put_chunk(out, "IHDR", ihdr);
    put_chunk(out, "IDAT", packed);
    put_chunk(out, "IEND", "");
    return out;
}

}  // namespace moe
