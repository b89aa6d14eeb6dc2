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

void collect(const ParameterSet& params, ParameterSet::Slot slot, const std::function<bool(const Param&)>& take,
             bool keep, const std::string& prefix, HostTensors& out) {
    const bool f64 = params.dtype() == DType::F64;
    for (const Param* param : params.stored(slot)) {
        const Param& p = *param;
        // Every rank of a split parameter's group helps gather it, wanted here or not.
        const bool kept = keep && take(p);
        if (!kept && !p.split()) continue;
        std::vector<float> values(size_t(p.numel()));
        if (f64) {
            std::vector<double> d(values.size());
            params.download(p, slot, d.data());
            values.assign(d.begin(), d.end());
        } else {
            params.download(p, slot, values.data());
        }
        if (!kept) continue;
        out.data.push_back(std::move(values));
        for (const FileTensor& f : p.files())
            out.refs.push_back({prefix + f.name, "F32", f.shape, out.data.back().data() + f.offset});
    }
}

void load_slot(ParameterSet& params, ParameterSet::Slot slot, const std::string& prefix,
               const std::function<const SafetensorsFile&(const std::string& name)>& file_for,
               const std::set<std::string>& kept) {
    const bool f64 = params.dtype() == DType::F64;
    std::vector<float> values;
    for (Param* param : params.stored(slot)) {
        Param& p = *param;
        if (kept.count(p.name)) continue;
        values.resize(size_t(p.numel()));
        for (const FileTensor& f : p.files())
            file_for(f.name).read(prefix + f.name, "F32", f.shape, values.data() + f.offset);
        if (f64) {
            const std::vector<double> d(values.begin(), values.end());
            params.upload(p, slot, d.data());
        } else {
            params.upload(p, slot, values.data());
        }
    }
}

std::set<std::string> load_weights(const std::string& path, ParameterSet& params,
                                   const std::set<std::string>& elsewhere) {
    SafetensorsFile file(path);
    std::set<std::string> kept;
    for (const Param& p : params.states())
        if (!file.has(p.name)) kept.insert(p.name);
    std::set<std::string> wanted;
    for (const std::string& name : params.names()) wanted.insert(name);
    for (const std::string& name : file.names())
        if (!wanted.count(name) && !elsewhere.count(name))
            throw DataError("'" + path + "' holds tensor '" + name +
                            "' that this model does not have: the file is of another model config");
    load_slot(params, ParameterSet::Slot::Value, "", [&](const std::string&) -> const SafetensorsFile& { return file; },
              kept);
    return kept;
}

}  // namespace moe
