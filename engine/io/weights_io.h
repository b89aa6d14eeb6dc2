// Named tensors to and from safetensors files (F32 on disk, MODEL.md names),
// whatever the backend and in-memory float type.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/params/parameters.h"
#include "engine/io/safetensors.h"
#include "engine/io/files.h"

namespace moe {

FileDigest save_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops,
                  const std::map<std::string, std::string>& metadata = {});
// Every tensor must be in the file with the same shape; a missing or
// mismatched one is a DataError naming it. Tensors in the file that the model
// does not have are an error too (a different model), except those named in
// `elsewhere` (experts that other ranks hold).
void load_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops,
                  const std::set<std::string>& elsewhere = {});
// One F32 tensor of an open file into t (any float dtype), shape checked.
void read_tensor(const SafetensorsFile& file, const std::string& name, const Tensor& t, Ops& ops);

}  // namespace moe
