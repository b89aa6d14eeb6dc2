// The model's parameters with their gradients and AdamW moments: arenas of
// one layout in the master dtype, plus the working copy the compute reads
// when the backend computes in another dtype (bf16 on the GPU). Experts of a
// layer are stacked [E_local, ...] in memory; files and tools see one tensor
// per expert under its global index (MODEL.md names).
//
// States are tensors of the model the optimizer does not train (a router's
// expert bias): values only, whole on every rank, saved and loaded with the
// weights.
//
// ZeRO-1 (parallel.shard_optimizer): the fp32 masters and both AdamW moments
// are split over a group, each rank keeping one chunk of every parameter
// (replicated parameters over the world, expert stacks over their
// expert-data-parallel group); gradients and the working copy stay whole, so
// the compute does not change. Gradients are then reduce-scattered and the
// updated working copy all-gathered (train/grad_sync.h, train/optimizer.h).
#pragma once
#include <deque>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "comm/group_place.h"
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

// The groups the optimizer state is split over (groups of one: not split).
struct OptimizerShards {
    GroupPlace replicated;  // the world
    GroupPlace experts;     // the expert-data-parallel group
};

// One tensor of a parameter as files see it: its MODEL.md name, shape and
// first element in the parameter.
struct FileTensor {
    std::string name;
    std::vector<int64_t> shape;
    int64_t offset;
    int64_t numel() const;
};

// A block of a fused parameter's rows as files see it: the name (expert
// stacks: with "{e}" for the index) and how many rows.
struct ParamPart {
    std::string name;
    int64_t rows;
};

struct Param {
    std::string name;              // MODEL.md name; expert stacks hold "{e}" for the index
    std::vector<int64_t> shape;    // in memory
    InitSpec init;
    bool decay = false;            // AdamW weight decay (2-D weights only)
    int expert_offset = -1;        // >= 0: dim 0 are experts from this global index
    // Not split: value (the master), m and v are the whole tensor. Split:
    // they are this rank's chunk, elements [chunk_begin(), + chunk) of the
    // flattened tensor padded to padded_numel(); grad and work are whole in
    // any case, their flat padded forms carrying the reduce-scatter and the
    // all-gather (the padding stays zero).
    Tensor value, grad, m, v;  // master dtype
    Tensor work;               // the compute's copy: value itself when the dtypes agree and nothing is split
    Tensor grad_flat, work_flat;  // [padded_numel()]
    GroupPlace shards;            // the group the optimizer state is split over
    int64_t chunk = 0;            // elements of the optimizer state here

    // A fused parameter: files name consecutive blocks of rows of each
    // expert (of the whole tensor when not a stack), in order (the experts'
    // gate and up projections, stored [E, 2I, H], and attention's q, k and v
    // projections, stored [(nh + 2 nkv) hd, H], so that one GEMM computes
    // them). Empty: the tensor is `name`.
    std::vector<ParamPart> parts;

    bool is_expert_stack() const { return expert_offset >= 0; }
    // The blocks files see: the parts, or all rows under `name` (expert
    // stacks: with "{e}" for the index).
    std::vector<ParamPart> file_parts() const;
    // The tensors files hold of this parameter: each expert of a stack (by
    // global index), and within it each part.
    std::vector<FileTensor> files() const;
    int64_t numel() const;
    bool split() const { return shards.size > 1; }
    int64_t chunk_begin() const { return int64_t(shards.rank) * chunk; }
    int64_t padded_numel() const { return int64_t(shards.size) * chunk; }
};

// One tensor as files see it: a name and a view into one of the arenas.
struct NamedTensor {
    std::string name;
    Tensor tensor;
};

// Bytes of the parameters' memory on one rank, by what they hold.
struct ParameterBytes {
    size_t masters = 0;       // fp32 (or f64) values the optimizer updates
    size_t working_copy = 0;  // the compute's bf16 copy (none when it is the master)
    size_t gradients = 0;
    size_t moments = 0;       // AdamW m and v
    size_t total() const { return masters + working_copy + gradients + moments; }
};

class ParameterSet {
public:
    enum class Slot { Value, Grad, M, V };
    // What the parameters are allocated for: training (values, gradients,
    // AdamW moments, working copy) or inference (values and working copy).
    enum class Use { training, inference };

    ParameterSet();
    ~ParameterSet();
    ParameterSet(const ParameterSet&) = delete;
    ParameterSet& operator=(const ParameterSet&) = delete;

    // parts: Param::parts (a fused parameter; name is then its own, files
    // never see it), their rows adding up to the rows of shape (of each
    // expert for a stack).
    Param& add(const std::string& name, std::vector<int64_t> shape, InitSpec init, bool decay,
               int expert_offset = -1, std::vector<ParamPart> parts = {});
    // A state: its value in the master dtype (work is the value itself),
    // never split, no gradient or moments; initialize() fills it from init.
    Param& add_state(const std::string& name, std::vector<int64_t> shape, InitSpec init);
    // Bytes allocate() will take for these parameters in this precision and
    // split (std::length_error past 2^64).
    ParameterBytes planned_bytes(const Precision& precision, const OptimizerShards& shards = {},
                                 Use use = Use::training) const;
    // Carves value, grad, m, v (and work) for every parameter (zero-filled);
    // for inference only value and work (grad, m and v stay empty).
    void allocate(Ops& ops, const Precision& precision, const OptimizerShards& shards = {},
                  Use use = Use::training);
    // Fills values from the seed: each file-level tensor (each expert, each
    // part too) has its own random stream, so a layout change does not change
    // the model.
    void initialize(uint64_t seed);
    // Rewrites the working copies from the values: after anything but the
    // optimizer wrote values (a load). Collective over the split groups.
    void refresh_work();

    // A parameter's whole values of one slot on the host, as F32 or F64
    // (dtype()): gathered from the group's chunks when split (then every
    // rank of the group calls it for the same parameter).
    void download(const Param& p, Slot slot, void* host) const;
    // Sets a slot from the whole values on the host (this rank's chunk of
    // them when split). The working copy follows with refresh_work().
    void upload(Param& p, Slot slot, const void* host);

    // The trained parameters.
    std::deque<Param>& all() { return params_; }
    const std::deque<Param>& all() const { return params_; }
    std::deque<Param>& states() { return states_; }
    const std::deque<Param>& states() const { return states_; }
    // What files hold of a slot: the parameters, and the states with the values.
    std::vector<const Param*> stored(Slot slot) const;
    std::vector<Param*> stored(Slot slot);
    const Param& find(const std::string& name) const;  // a parameter or a state
    int64_t numel() const;  // the trained parameters' elements
    bool split() const;  // any parameter's optimizer state split
    // Tensors as files name them, experts split, in a stable order (the
    // value and moments only while nothing is split: else download()); the
    // values include the states.
    std::vector<NamedTensor> named(Slot slot) const;
    // The values' names alone, in the same order (also before allocation).
    std::vector<std::string> names() const;
    // The names of the experts of a model of num_experts per layer that this
    // set does not hold (other ranks of its EP group do).
    std::set<std::string> experts_elsewhere(int num_experts) const;
    Ops& ops() const { return *ops_; }
    DType dtype() const { return precision_.master; }

    // The arenas, one per role: masters, gradients, m, v, working copy.
    struct Arenas {
        Arena masters, grads, m, v, work;
    };

private:
    std::deque<Param> params_;  // deque: references stay valid as it grows
    std::deque<Param> states_;
    Ops* ops_ = nullptr;
    Precision precision_;
    std::unique_ptr<Arenas> arenas_;
};

// "layers.0.moe.experts.{e}.w_gate" with e -> "layers.0.moe.experts.5.w_gate".
std::string expert_name(const std::string& pattern, int expert);

}  // namespace moe
