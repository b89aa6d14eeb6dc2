// The safetensors format, without a new library: an 8-byte little-endian
// header length, a JSON header {"name": {"dtype", "shape", "data_offsets"},
// "__metadata__": {string: string}} padded with spaces to a multiple of 8, then
// the tensor bytes, contiguous. We write the JSON by hand and parse it with
// yaml-cpp (JSON is YAML flow syntax), so files from Python's writers load too.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/io/files.h"

namespace moe {

struct TensorRef {
    std::string name;
    std::string dtype;  // "F32", "F64", "I32", "BF16", "F16", "I64", "U8", ...
    std::vector<int64_t> shape;
    const void* data;
};

// A JSON string literal: quotes, backslashes and control characters escaped.
std::string json_string(const std::string& s);
// "[2, 3]"
std::string shape_text(const std::vector<int64_t>& shape);

// Bytes per element of a safetensors dtype; 0 if unknown.
size_t safetensors_dtype_size(const std::string& dtype);

// Writes path.tmp, fsyncs it, renames it over path.
FileDigest write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

class SafetensorsFile {
public:
    struct Info {
        std::string dtype;
        std::vector<int64_t> shape;
        uint64_t begin = 0, end = 0;  // byte offsets within the data section
    };

    // Validates the whole header against the file; DataError if anything is off.
    explicit SafetensorsFile(const std::string& path);

    bool has(const std::string& name) const { return info_.count(name) > 0; }
    std::vector<std::string> names() const { return names_; }  // in file (data) order
    const Info& info(const std::string& name) const;
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

    // Copies a tensor into dst after checking its dtype and shape exactly.
    void read(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape, void* dst) const;
    std::vector<char> read_raw(const std::string& name) const;

private:
    ReadOnlyFile file_;
    uint64_t data_start_ = 0;
    std::map<std::string, Info> info_;
    std::vector<std::string> names_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace moe
