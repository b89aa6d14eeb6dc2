#include "engine/safetensors.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/shards.h"

namespace moe {

namespace {

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

uint64_t numel(const std::vector<int64_t>& shape) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= uint64_t(d);
    return n;
}

// Reads exactly n bytes at offset, or throws naming the file.
void pread_all(const std::string& path, uint64_t offset, void* dst, size_t n) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw DataError("'" + path + "': cannot open: " + std::strerror(errno));
    size_t done = 0;
    while (done < n) {
        const ssize_t got = ::pread(fd, static_cast<char*>(dst) + done, n - done, off_t(offset + done));
        if (got <= 0) {
            ::close(fd);
            throw DataError("'" + path + "': cannot read " + std::to_string(n) + " bytes at " + std::to_string(offset) +
                            ": the file is truncated");
        }
        done += size_t(got);
    }
    ::close(fd);
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
    static const std::map<std::string, size_t> sizes = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                                                        {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
    auto it = sizes.find(dtype);
    return it == sizes.end() ? 0 : it->second;
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::string header = "{";
    bool first = true;
    if (!metadata.empty()) {
        header += "\"__metadata__\": {";
        for (auto it = metadata.begin(); it != metadata.end(); ++it)
            header += (it == metadata.begin() ? "" : ", ") + json_string(it->first) + ": " + json_string(it->second);
        header += "}";
        first = false;
    }
    uint64_t offset = 0;
    for (const TensorRef& t : tensors) {
        const uint64_t bytes = numel(t.shape) * safetensors_dtype_size(t.dtype);
        header += std::string(first ? "" : ", ") + json_string(t.name) + ": {\"dtype\": " + json_string(t.dtype) +
                  ", \"shape\": " + shape_text(t.shape) + ", \"data_offsets\": [" + std::to_string(offset) + ", " +
                  std::to_string(offset + bytes) + "]}";
        offset += bytes;
        first = false;
    }
    header += "}";
    header.append((8 - header.size() % 8) % 8, ' ');

    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw DataError("cannot write '" + tmp + "': " + std::strerror(errno));
        const uint64_t n = header.size();
        f.write(reinterpret_cast<const char*>(&n), 8);
        f.write(header.data(), std::streamsize(n));
        for (const TensorRef& t : tensors)
            f.write(static_cast<const char*>(t.data), std::streamsize(numel(t.shape) * safetensors_dtype_size(t.dtype)));
        if (!f.flush()) throw DataError("cannot write '" + tmp + "': disk full?");
    }
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) throw DataError("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(path, ec);
    if (ec) throw DataError("'" + path + "': cannot read: " + ec.message());
    const std::string bad = "'" + path + "' is not a valid safetensors file: ";
    if (size < 8) throw DataError(bad + "shorter than its 8-byte header length");
    uint64_t header_len = 0;
    pread_all(path, 0, &header_len, 8);
    if (header_len > size - 8 || header_len > (uint64_t(100) << 20))
        throw DataError(bad + "header length " + std::to_string(header_len) + " does not fit the file");
    std::string header(header_len, '\0');
    pread_all(path, 8, header.data(), header_len);
    data_start_ = 8 + header_len;
    const uint64_t data_size = size - data_start_;

    YAML::Node root;
    try {
        root = YAML::Load(header);
    } catch (const YAML::Exception& e) {
        throw DataError(bad + "header is not JSON (" + e.msg + ")");
    }
    if (!root.IsMap()) throw DataError(bad + "header is not a JSON object");
    try {
        for (const auto& kv : root) {
            const std::string name = kv.first.as<std::string>();
            if (name == "__metadata__") {
                for (const auto& m : kv.second) metadata_[m.first.as<std::string>()] = m.second.as<std::string>();
                continue;
            }
            Info info;
            info.dtype = kv.second["dtype"].as<std::string>();
            for (const auto& d : kv.second["shape"]) info.shape.push_back(d.as<int64_t>());
            const YAML::Node off = kv.second["data_offsets"];
            if (!off.IsSequence() || off.size() != 2) throw DataError(bad + "tensor '" + name + "' has no data_offsets");
            info.begin = off[0].as<uint64_t>();
            info.end = off[1].as<uint64_t>();
            const size_t width = safetensors_dtype_size(info.dtype);
            if (width == 0) throw DataError(bad + "tensor '" + name + "' has unknown dtype " + info.dtype);
            if (info.end < info.begin || info.end > data_size || info.end - info.begin != numel(info.shape) * width)
                throw DataError(bad + "tensor '" + name + "' data_offsets [" + std::to_string(info.begin) + ", " +
                                std::to_string(info.end) + "] do not match its shape " + shape_text(info.shape) +
                                " or the file size (truncated?)");
            info_[name] = info;
            names_.push_back(name);
        }
    } catch (const YAML::Exception& e) {
        throw DataError(bad + "malformed tensor entry (" + e.msg + ")");
    }
    std::sort(names_.begin(), names_.end(),
              [&](const std::string& a, const std::string& b) { return info_[a].begin < info_[b].begin; });
    uint64_t expect = 0;
    for (const std::string& n : names_) {
        if (info_[n].begin != expect) throw DataError(bad + "tensor data is not contiguous at '" + n + "'");
        expect = info_[n].end;
    }
    if (expect != data_size)
        throw DataError(bad + std::to_string(data_size - expect) + " bytes after the last tensor");
}

const SafetensorsFile::Info& SafetensorsFile::info(const std::string& name) const {
    auto it = info_.find(name);
    if (it == info_.end())
        throw DataError("'" + path_ + "' has no tensor '" + name + "': the file is of another model or incomplete");
    return it->second;
}

void SafetensorsFile::read(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
                           void* dst) const {
    const Info& i = info(name);
    if (i.dtype != dtype || i.shape != shape)
        throw DataError("'" + path_ + "': tensor '" + name + "' is " + i.dtype + " " + shape_text(i.shape) +
                        ", expected " + dtype + " " + shape_text(shape) + ": the file is of another model config");
    pread_all(path_, data_start_ + i.begin, dst, i.end - i.begin);
}

std::vector<char> SafetensorsFile::read_raw(const std::string& name) const {
    const Info& i = info(name);
    std::vector<char> out(i.end - i.begin);
    pread_all(path_, data_start_ + i.begin, out.data(), out.size());
    return out;
}

}  // namespace moe
