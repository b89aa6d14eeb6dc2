#include "engine/weights_io.h"

#include <set>

#include "engine/safetensors.h"
#include "engine/shards.h"

namespace moe {

namespace {
std::vector<int64_t> shape_of(const Tensor& t) { return std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim); }
}  // namespace

void save_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops,
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
    write_safetensors(path, refs, metadata);
}

void load_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops) {
    SafetensorsFile file(path);
    std::set<std::string> wanted;
    for (const NamedTensor& nt : tensors) wanted.insert(nt.name);
    for (const std::string& name : file.names())
        if (!wanted.count(name))
            throw DataError("'" + path + "' holds tensor '" + name +
                            "' that this model does not have: the file is of another model config");
    std::vector<float> host;
    for (const NamedTensor& nt : tensors) {
        const Tensor& t = nt.tensor;
        host.resize(t.numel());
        file.read(nt.name, "F32", shape_of(t), host.data());
        if (t.dtype == DType::F64) {
            std::vector<double> d(host.begin(), host.end());
            ops.copy_from_host(t, d.data());
        } else {
            ops.copy_from_host(t, host.data());
        }
    }
}

}  // namespace moe
