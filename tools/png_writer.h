// A Canvas as a PNG file: 8-bit RGB, no interlace, each row filtered by the
// "up" predictor (flat chart areas become zeros) and deflated by zlib.
#pragma once
#include <string>

#include "tools/raster.h"

namespace moe {

// The bytes of the PNG file.
std::string encode_png(const Canvas& canvas);

}  // namespace moe
