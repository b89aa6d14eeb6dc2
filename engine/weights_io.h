// Named tensors to and from safetensors files (F32 on disk, MODEL.md names),
// whatever the backend and in-memory float type.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/parameters.h"

namespace moe {

void save_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops,
                  const std::map<std::string, std::string>& metadata = {});
// Every tensor must be in the file with the same shape; a missing or
// mismatched one is a DataError naming it. Tensors in the file that the model
// does not have are an error too (a different model).
void load_tensors(const std::string& path, const std::vector<NamedTensor>& tensors, Ops& ops);

}  // namespace moe
