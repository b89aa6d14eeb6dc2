#include "engine/parameters.h"

#include <stdexcept>

#include "engine/rng.h"

namespace moe {

int64_t Param::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string expert_name(const std::string& pattern, int expert) {
    const size_t at = pattern.find("{e}");
    if (at == std::string::npos) throw std::logic_error("expert parameter name without {e}: " + pattern);
    return pattern.substr(0, at) + std::to_string(expert) + pattern.substr(at + 3);
}

Param& ParameterSet::add(const std::string& name, std::vector<int64_t> shape, InitSpec init, bool decay,
                         int expert_offset) {
    if (ops_) throw std::logic_error("parameter added after allocation: " + name);
    Param p;
    p.name = name;
    p.shape = std::move(shape);
    p.init = init;
    p.decay = decay;
    p.expert_offset = expert_offset;
    params_.push_back(std::move(p));
    return params_.back();
}

namespace {
Tensor carve(Arena& arena, DType dtype, const std::vector<int64_t>& shape) {
    switch (shape.size()) {
        case 1: return arena.take(dtype, {shape[0]});
        case 2: return arena.take(dtype, {shape[0], shape[1]});
        case 3: return arena.take(dtype, {shape[0], shape[1], shape[2]});
    }
    throw std::logic_error("parameter of rank " + std::to_string(shape.size()));
}
}  // namespace

size_t ParameterSet::planned_bytes(const Precision& precision) const {
    const bool separate_work = precision.work != precision.master;
    size_t bytes = 0;
    for (const Param& p : params_)
        bytes += size_t(p.numel()) * (4 * dtype_size(precision.master) + (separate_work ? dtype_size(precision.work) : 0));
    return bytes;
}

void ParameterSet::allocate(Ops& ops, const Precision& precision) {
    ops_ = &ops;
    precision_ = precision;
    const bool separate_work = precision.work != precision.master;
    std::vector<std::pair<Tensor Param::*, DType>> slots = {{&Param::value, precision.master},
                                                             {&Param::grad, precision.master},
                                                             {&Param::m, precision.master},
                                                             {&Param::v, precision.master}};
    if (separate_work) slots.push_back({&Param::work, precision.work});
    for (auto [slot, dtype] : slots) {
        auto arena = std::make_unique<Arena>(ops);
        for (int pass = 0; pass < 2; ++pass) {
            if (pass == 1) arena->allocate();
            for (Param& p : params_) p.*slot = carve(*arena, dtype, p.shape);
        }
        arenas_.push_back(std::move(arena));
    }
    if (!separate_work)
        for (Param& p : params_) p.work = p.value;
}

void ParameterSet::refresh_work() {
    for (Param& p : params_)
        if (p.work.data != p.value.data) ops_->copy(p.work, p.value);
}

namespace {
void fill(const InitSpec& init, Rng& rng, double* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        switch (init.kind) {
            case InitSpec::Normal: out[i] = init.a * rng.normal(); break;
            case InitSpec::Uniform: out[i] = rng.uniform(-init.a, init.a); break;
            case InitSpec::Fill: out[i] = init.a; break;
            case InitSpec::Thirds: out[i] = i < n / 3 ? init.a : i < 2 * n / 3 ? init.b : init.c; break;
        }
    }
}
}  // namespace

void ParameterSet::initialize(uint64_t seed) {
    std::vector<double> host;
    std::vector<float> host32;
    for (const Param& p : params_) {
        const int experts = p.is_expert_stack() ? int(p.shape[0]) : 1;
        const int64_t per = p.numel() / experts;
        host.resize(p.numel());
        for (int i = 0; i < experts; ++i) {
            const std::string name = p.is_expert_stack() ? expert_name(p.name, p.expert_offset + i) : p.name;
            Rng rng(seed, name);
            fill(p.init, rng, host.data() + i * per, per);
        }
        if (dtype() == DType::F64) {
            ops_->copy_from_host(p.value, host.data());
        } else {
            host32.assign(host.begin(), host.end());
            ops_->copy_from_host(p.value, host32.data());
        }
    }
    refresh_work();
}

void ParameterSet::zero_grads() {
    for (Param& p : params_) ops_->zero(p.grad);
}

const Param& ParameterSet::find(const std::string& name) const {
    for (const Param& p : params_)
        if (p.name == name) return p;
    throw std::logic_error("no parameter " + name);
}

int64_t ParameterSet::numel() const {
    int64_t n = 0;
    for (const Param& p : params_) n += p.numel();
    return n;
}

std::vector<NamedTensor> ParameterSet::named(Slot slot) const {
    std::vector<NamedTensor> out;
    for (const Param& p : params_) {
        const Tensor& t = slot == Slot::Value ? p.value : slot == Slot::Grad ? p.grad : slot == Slot::M ? p.m : p.v;
        if (!p.is_expert_stack()) {
            out.push_back({p.name, t});
            continue;
        }
        for (int64_t i = 0; i < p.shape[0]; ++i) {
            Tensor e = t.rows(i, i + 1);
            out.push_back({expert_name(p.name, p.expert_offset + int(i)), e.view({p.shape[1], p.shape[2]})});
        }
    }
    return out;
}

std::set<std::string> ParameterSet::experts_elsewhere(int num_experts) const {
    std::set<std::string> names;
    for (const Param& p : params_)
        if (p.is_expert_stack())
            for (int e = 0; e < num_experts; ++e)
                if (e < p.expert_offset || e >= p.expert_offset + p.shape[0]) names.insert(expert_name(p.name, e));
    return names;
}

}  // namespace moe
