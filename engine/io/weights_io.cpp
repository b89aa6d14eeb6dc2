#include "engine/io/weights_io.h"

#include "engine/io/files.h"

namespace moe {

namespace {
std::vector<int64_t> shape_of(const Tensor& t) { return std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim); }
}  // namespace

FileDigest save_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops,
                  const std::map<std::string, std::string>& metadata) {
    std::vector<std::vector<float>> host(tensors.size());
    std::vector<TensorRef> refs;
    for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& t = tensors[i].tensor;
        host[i].resize(t.numel());
        if (t.dtype == DType::F64) {
            std::vector<double> d(t.numel());
            ops.copy_to_host(d.data(), t);
            host[i].assign(d.begin(), d.end());
        } else {
            ops.copy_to_host(host[i].data(), t);
        }
        refs.push_back({tensors[i].name, "F32", shape_of(t), host[i].data()});
    }
    return write_safetensors(path, refs, metadata);
}

void read_tensor(const SafetensorsFile& file, const std::string& name, const Tensor& t, Ops& ops) {
    std::vector<float> host(size_t(t.numel()));
    file.read(name, "F32", shape_of(t), host.data());
    if (t.dtype == DType::F64) {
        std::vector<double> d(host.begin(), host.end());
        ops.copy_from_host(t, d.data());
    } else {
        ops.copy_from_host(t, host.data());
    }
}

void load_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops,
                  const std::set<std::string>& elsewhere) {
    SafetensorsFile file(path);
    std::set<std::string> wanted;
    for (const NamedTensor& nt : tensors) wanted.insert(nt.name);
    for (const std::string& name : file.names())
        if (!wanted.count(name) && !elsewhere.count(name))
            throw DataError("'" + path + "' holds tensor '" + name +
                            "' that this model does not have: the file is of another model config");
    for (const NamedTensor& nt : tensors) read_tensor(file, nt.name, nt.tensor, ops);
}

}  // namespace moe
