// The model's parameters with their gradients and AdamW moments: arenas of
// one layout in the master dtype, plus the working copy the compute reads
// when the backend computes in another dtype (bf16 on the GPU). Experts of a layer are stacked [E_local, ...] in memory; files
// and tools see one tensor per expert under its global index (MODEL.md names).
#pragma once
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/params/arena.h"
#include "kernels/ops.h"

namespace moe {

struct InitSpec {
    enum Kind { Normal, Uniform, Fill, Thirds } kind = Normal;
    double a = 0, b = 0, c = 0;  // Normal: std a; Uniform: U(-a, a); Fill: a; Thirds: a | b | c
    static InitSpec normal(double std) { return {Normal, std}; }
    static InitSpec uniform(double bound) { return {Uniform, bound}; }
    static InitSpec fill(double v) { return {Fill, v}; }
    static InitSpec thirds(double a, double b, double c) { return {Thirds, a, b, c}; }
};

struct Param {
    std::string name;              // MODEL.md name; expert stacks hold "{e}" for the index
    std::vector<int64_t> shape;    // in memory
    InitSpec init;
    bool decay = false;            // AdamW weight decay (2-D weights only)
    int expert_offset = -1;        // >= 0: dim 0 are experts from this global index
    Tensor value, grad, m, v;  // master dtype
    Tensor work;               // the compute's copy: value itself when the dtypes agree

    bool is_expert_stack() const { return expert_offset >= 0; }
    int64_t numel() const;
};

// One tensor as files see it: a name and a view into one of the arenas.
struct NamedTensor {
    std::string name;
    Tensor tensor;
};

class ParameterSet {
public:
    enum class Slot { Value, Grad, M, V };

    ParameterSet() = default;
    ParameterSet(const ParameterSet&) = delete;
    ParameterSet& operator=(const ParameterSet&) = delete;

    Param& add(const std::string& name, std::vector<int64_t> shape, InitSpec init, bool decay,
               int expert_offset = -1);
    // Bytes allocate() will take for these parameters in this precision
    // (std::length_error past 2^64).
    size_t planned_bytes(const Precision& precision) const;
    // Carves value, grad, m, v (and work) for every parameter (zero-filled).
    void allocate(Ops& ops, const Precision& precision);
    // Fills values from the seed: each file-level tensor (each expert too) has
    // its own random stream, so a layout change does not change the model.
    void initialize(uint64_t seed);
    // Rewrites the working copies from the values: after anything but the
    // optimizer wrote values (a load).
    void refresh_work();

    std::deque<Param>& all() { return params_; }
    const std::deque<Param>& all() const { return params_; }
    const Param& find(const std::string& name) const;
    int64_t numel() const;
    // Tensors as files name them, experts split, in a stable order.
    std::vector<NamedTensor> named(Slot slot) const;
    // Their names alone, in the same order (also before allocation).
    std::vector<std::string> names() const;
    // The names of the experts of a model of num_experts per layer that this
    // set does not hold (other ranks of its EP group do).
    std::set<std::string> experts_elsewhere(int num_experts) const;
    Ops& ops() const { return *ops_; }
    DType dtype() const { return precision_.master; }

private:
    std::deque<Param> params_;  // deque: references stay valid as it grows
    Ops* ops_ = nullptr;
    Precision precision_;
    std::vector<std::unique_ptr<Arena>> arenas_;
};

// "layers.0.moe.experts.{e}.w_gate" with e -> "layers.0.moe.experts.5.w_gate".
std::string expert_name(const std::string& pattern, int expert);

}  // namespace moe
