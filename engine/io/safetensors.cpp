#include "engine/io/safetensors.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <set>

namespace moe {

// Control characters as \u00XX: YAML, which parses our headers, would fold a
// raw newline inside quotes into a space.
std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += char(c);
        } else if (c < 0x20 || c == 0x7f) {
            char code[8];
            std::snprintf(code, sizeof code, "\\u%04x", c);
            out += code;
        } else {
            out += char(c);
        }
    }
    return out + "\"";
}

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

namespace {

// The safetensors reference implementation refuses larger headers too.
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;

// Bytes of a tensor of `width`-byte elements; calls `fail` (which throws) when
// a dimension is negative or the size overflows.
template <class Fail>
uint64_t tensor_bytes(const std::vector<int64_t>& shape, size_t width, Fail fail) {
    uint64_t n = width;
    for (int64_t d : shape) {
        if (d < 0) fail("negative dimension in shape " + shape_text(shape));
        if (d != 0 && n > UINT64_MAX / uint64_t(d)) fail("shape " + shape_text(shape) + " is too large");
        n *= uint64_t(d);
    }
    return n;
}

// Whether a header entry has the field with this type; yaml-cpp throws when
// asked the type of a missing field, so check that it exists first.
bool has_field(const YAML::Node& entry, const char* key, YAML::NodeType::value type) {
    const YAML::Node field = entry[key];
    return field.IsDefined() && field.Type() == type;
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
    static const std::map<std::string, size_t> sizes = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I64", 8}, {"I32", 4},
        {"I16", 2}, {"I8", 1},  {"U64", 8}, {"U32", 4},  {"U16", 2},     {"U8", 1},      {"BOOL", 1}};
    const auto it = sizes.find(dtype);
    return it == sizes.end() ? 0 : it->second;
}

FileDigest write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\": {";
        for (auto it = metadata.begin(); it != metadata.end(); ++it)
            header += (it == metadata.begin() ? "" : ", ") + json_string(it->first) + ": " + json_string(it->second);
        header += "}";
    }
    std::vector<ByteSpan> parts(2);  // header length and header, filled below
    std::set<std::string> seen;
    uint64_t offset = 0;
    for (const TensorRef& t : tensors) {
        const auto fail = [&](const std::string& what) {
            throw DataError("cannot write '" + path + "': tensor '" + t.name + "': " + what);
        };
        const size_t width = safetensors_dtype_size(t.dtype);
        if (width == 0) fail("unknown dtype '" + t.dtype + "' (use F32, F64, BF16, F16, I64, I32, U8, ...)");
        if (t.name == "__metadata__") fail("the name is reserved for metadata: rename the tensor");
        if (!seen.insert(t.name).second) fail("the name appears twice: tensor names must be unique");
        const uint64_t bytes = tensor_bytes(t.shape, width, fail);
        if (bytes > 0 && t.data == nullptr) fail("no data for " + std::to_string(bytes) + " bytes");
        header += std::string(header.size() > 1 ? ", " : "") + json_string(t.name) +
                  ": {\"dtype\": " + json_string(t.dtype) + ", \"shape\": " + shape_text(t.shape) +
                  ", \"data_offsets\": [" + std::to_string(offset) + ", " + std::to_string(offset + bytes) + "]}";
        parts.push_back({t.data, size_t(bytes)});
        offset += bytes;
    }
    header += "}";
    header.append((8 - header.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
    const uint64_t header_len = header.size();
    parts[0] = {&header_len, 8};
    parts[1] = {header.data(), header.size()};
    return write_file_atomically(path, parts);
}

namespace {

// Stops on a file that is not valid safetensors: what is wrong, and the fix.
struct Invalid {
    std::string path;
    [[noreturn]] void operator()(const std::string& what) const {
        throw DataError("'" + path + "' is not a valid safetensors file: " + what +
                        ": the file is truncated or corrupt, write it again");
    }
};

// The header: an 8-byte length, then that many bytes of a JSON object; the
// tensors' data follows.
struct Header {
    YAML::Node root;
    uint64_t data_start;
};

Header read_header(const ReadOnlyFile& file, const Invalid& invalid) {
    const uint64_t size = file.size();
    if (size < 8) invalid(std::to_string(size) + " bytes, shorter than the 8-byte header length");
    uint64_t header_len = 0;
    file.read_at(0, &header_len, 8);
    if (header_len > size - 8 || header_len > kMaxHeaderBytes)
        invalid("header length " + std::to_string(header_len) + " (at byte offset 0) does not fit " +
                (header_len > kMaxHeaderBytes ? "the 100 MiB limit" : "the " + std::to_string(size) + "-byte file"));
    std::string header(header_len, '\0');
    file.read_at(8, &header[0], header_len);
    if (header.empty() || header[0] != '{') invalid("the header (at byte offset 8) is not a JSON object");
    YAML::Node root;
    try {
        root = YAML::Load(header);
    } catch (const YAML::Exception& e) {
        const std::string at = e.mark.is_null() ? "" : " at byte offset " + std::to_string(8 + e.mark.pos);
        invalid("the header is not valid JSON (" + e.msg + at + ")");
    }
    if (!root.IsMap()) invalid("the header (at byte offset 8) is not a JSON object");
    return {root, 8 + header_len};
}

// A tensor's entry: its dtype, shape and data offsets, the bytes those hold
// matching the shape, within the data section (from `data_start` to the end
// of the `size`-byte file).
SafetensorsFile::Info tensor_entry(const std::string& name, const YAML::Node& entry, uint64_t data_start,
                                   uint64_t size, const Invalid& invalid) {
    const auto fail = [&](const std::string& what) { invalid("tensor '" + name + "': " + what); };
    if (!entry.IsMap() || !has_field(entry, "dtype", YAML::NodeType::Scalar) ||
        !has_field(entry, "shape", YAML::NodeType::Sequence) ||
        !has_field(entry, "data_offsets", YAML::NodeType::Sequence) || entry["data_offsets"].size() != 2)
        fail("needs \"dtype\", \"shape\" and two \"data_offsets\"");
    const YAML::Node offsets = entry["data_offsets"];
    SafetensorsFile::Info info;
    info.dtype = entry["dtype"].as<std::string>();
    for (const auto& d : entry["shape"]) info.shape.push_back(d.as<int64_t>());
    const int64_t begin = offsets[0].as<int64_t>(), end = offsets[1].as<int64_t>();
    if (begin < 0 || end < begin)
        fail("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] are not a range");
    info.begin = uint64_t(begin);
    info.end = uint64_t(end);
    const size_t width = safetensors_dtype_size(info.dtype);
    if (width == 0) fail("unknown dtype '" + info.dtype + "'");
    const uint64_t bytes = tensor_bytes(info.shape, width, fail);
    if (info.end - info.begin != bytes)
        fail("data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "] hold " +
             std::to_string(info.end - info.begin) + " bytes, but " + info.dtype + " " + shape_text(info.shape) +
             " needs " + std::to_string(bytes));
    if (info.end > size - data_start)
        fail("data ends at byte offset " + std::to_string(data_start + info.end) + ", past the end of the " +
             std::to_string(size) + "-byte file");
    return info;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
    const Invalid invalid{path};
    const Header header = read_header(file_, invalid);
    data_start_ = header.data_start;
    for (const auto& kv : header.root) {
        std::string name;
        try {
            name = kv.first.as<std::string>();
            if (name == "__metadata__") {
                if (!kv.second.IsMap() && !kv.second.IsNull()) invalid("__metadata__ is not an object of strings");
                for (const auto& m : kv.second) metadata_[m.first.as<std::string>()] = m.second.as<std::string>();
                continue;
            }
            if (!info_.emplace(name, tensor_entry(name, kv.second, data_start_, file_.size(), invalid)).second)
                invalid("tensor '" + name + "': the name appears twice in the header");
            names_.push_back(name);
        } catch (const YAML::Exception& e) {
            invalid("malformed entry '" + name + "' in the header (" + e.msg + ")");
        }
    }
    // Data order, with no gap and nothing after the last tensor; zero-byte
    // tensors keep their header order.
    std::stable_sort(names_.begin(), names_.end(),
                     [&](const std::string& a, const std::string& b) { return info_[a].begin < info_[b].begin; });
    uint64_t expect = 0;
    for (const std::string& n : names_) {
        if (info_[n].begin != expect)
            invalid("tensor '" + n + "' starts at data offset " + std::to_string(info_[n].begin) + ", expected " +
                    std::to_string(expect) + " (tensor data must be contiguous)");
        expect = info_[n].end;
    }
    const uint64_t data_size = file_.size() - data_start_;
    if (expect != data_size)
        invalid(std::to_string(data_size - expect) + " bytes after the last tensor (at byte offset " +
                std::to_string(data_start_ + expect) + ")");
}

const SafetensorsFile::Info& SafetensorsFile::info(const std::string& name) const {
    const auto it = info_.find(name);
    if (it == info_.end())
        throw DataError("'" + file_.path() + "' has no tensor '" + name +
                        "': the file is of another model or incomplete");
    return it->second;
}

void SafetensorsFile::read(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
                           void* dst) const {
    const std::string wanted = dtype + " " + shape_text(shape);
    const auto it = info_.find(name);
    if (it == info_.end())
        throw DataError("'" + file_.path() + "' has no tensor '" + name + "' (expected " + wanted +
                        "): the file is of another model or incomplete");
    const Info& i = it->second;
    if (i.dtype != dtype || i.shape != shape)
        throw DataError("'" + file_.path() + "': tensor '" + name + "' is " + i.dtype + " " + shape_text(i.shape) +
                        ", expected " + wanted + ": the file was written for another model config");
    file_.read_at(data_start_ + i.begin, dst, size_t(i.end - i.begin));
}

std::vector<char> SafetensorsFile::read_raw(const std::string& name) const {
    const Info& i = info(name);
    std::vector<char> out(size_t(i.end - i.begin));
    file_.read_at(data_start_ + i.begin, out.data(), out.size());
    return out;
}

}  // namespace moe
