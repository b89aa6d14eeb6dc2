// Parameters and named tensors to and from safetensors files (F32 on disk,
// MODEL.md names), whatever the backend, its float type, and whether the
// optimizer state is split over ranks (a split parameter is gathered from its
// group, or each rank takes its chunk of what it reads).
#pragma once
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/io/files.h"
#include "engine/io/safetensors.h"
#include "engine/params/parameters.h"

namespace moe {

FileDigest save_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops,
                        const std::map<std::string, std::string>& metadata = {});

// One slot of parameters on the host in F32, as files name them (experts
// one by one), ready to write.
struct HostTensors {
    std::vector<std::vector<float>> data;
    std::vector<TensorRef> refs;  // into data
};

// Adds one slot of the parameters that `take` selects, named prefix + name,
// if `keep`. Collective for split parameters: every rank of a group takes
// part in gathering each of its split parameters, selected or kept or not.
void collect(const ParameterSet& params, ParameterSet::Slot slot, const std::function<bool(const Param&)>& take,
             bool keep, const std::string& prefix, HostTensors& out);

// Sets one slot of every parameter from files: `file_for(name)` is the open
// file that holds the tensor prefix + name (the part of its expert); those
// named in `kept` stay as they are. Shapes are checked; the working copy
// follows with ParameterSet::refresh_work().
void load_slot(ParameterSet& params, ParameterSet::Slot slot, const std::string& prefix,
               const std::function<const SafetensorsFile&(const std::string& name)>& file_for,
               const std::set<std::string>& kept = {});

// The weights of an exported model or a weights file (--init-from): every
// parameter must be in the file with the same shape; a missing or mismatched
// one is a DataError naming it. Tensors in the file that the model does not
// have are an error too (a different model), except those named in
// `elsewhere` (experts that other ranks hold). A state the file lacks (the
// expert bias of a model trained without one) keeps its start; their names
// are returned. The working copy follows with ParameterSet::refresh_work().
std::set<std::string> load_weights(const std::string& path, ParameterSet& params,
                                   const std::set<std::string>& elsewhere = {});

}  // namespace moe
