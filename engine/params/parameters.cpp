#include "engine/params/parameters.h"

#include <deque>
#include <stdexcept>
#include <vector>

#include "engine/params/rng.h"

namespace moe {

int64_t Param::numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
        if (d < 0 || __builtin_mul_overflow(n, d, &n)) throw std::length_error("parameter " + name + " too large");
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

namespace {
// The arenas allocate() carves, one per slot: value, grad, m, v in the master
// dtype, and the working copy where the compute's dtype differs.
std::vector<DType> slot_dtypes(const Precision& precision) {
    std::vector<DType> slots(4, precision.master);
    if (precision.work != precision.master) slots.push_back(precision.work);
    return slots;
}
}  // namespace

size_t ParameterSet::planned_bytes(const Precision& precision) const {
    size_t bytes = 0;
    for (DType dtype : slot_dtypes(precision)) {
        Arena plan;  // the same carving as allocate(), dry
        for (const Param& p : params_) carve(plan, dtype, p.shape);
        if (__builtin_add_overflow(bytes, plan.bytes(), &bytes)) throw std::length_error("parameters too large");
    }
    return bytes;
}

void ParameterSet::allocate(Ops& ops, const Precision& precision) {
    ops_ = &ops;
    precision_ = precision;
    const bool separate_work = precision.work != precision.master;
    const std::vector<DType> dtypes = slot_dtypes(precision);
    std::vector<std::pair<Tensor Param::*, DType>> slots = {
        {&Param::value, dtypes[0]}, {&Param::grad, dtypes[1]}, {&Param::m, dtypes[2]}, {&Param::v, dtypes[3]}};
    if (separate_work) slots.push_back({&Param::work, dtypes[4]});
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
// Values in double, stored as T (the rounding of a float copy of them).
template <class T> void fill(const InitSpec& init, Rng& rng, T* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        double x = 0;
        switch (init.kind) {
            case InitSpec::Normal: x = init.a * rng.normal(); break;
            case InitSpec::Uniform: x = rng.uniform(-init.a, init.a); break;
            case InitSpec::Fill: x = init.a; break;
            case InitSpec::Thirds: x = i < n / 3 ? init.a : i < 2 * n / 3 ? init.b : init.c; break;
        }
        out[i] = T(x);
    }
}

// Every parameter, and every expert of a stack, draws from its own named
// stream: the slices fill in parallel (the values do not depend on the thread
// count), a batch of parameters at a time so host memory stays bounded. A
// billion values take seconds on a node's cores rather than minutes on one.
template <class T> void initialize_as(std::deque<Param>& params, Ops& ops, uint64_t seed) {
    constexpr int64_t kBatchValues = int64_t(1) << 26;
    struct Slice {
        const Param* param;
        int expert;  // within the stack; 0 for a plain parameter
        int64_t at, n;
    };
    std::vector<T> host;
    for (auto first = params.begin(); first != params.end();) {
        std::vector<Slice> slices;
        int64_t total = 0;
        auto last = first;
        for (; last != params.end() && (last == first || total + last->numel() <= kBatchValues); ++last) {
            const int experts = last->is_expert_stack() ? int(last->shape[0]) : 1;
            const int64_t per = last->numel() / experts;
            for (int e = 0; e < experts; ++e) slices.push_back({&*last, e, total + e * per, per});
            total += last->numel();
        }
        host.resize(size_t(total));
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t i = 0; i < slices.size(); ++i) {
            const Slice& s = slices[i];
            const Param& p = *s.param;
            Rng rng(seed, p.is_expert_stack() ? expert_name(p.name, p.expert_offset + s.expert) : p.name);
            fill(p.init, rng, host.data() + s.at, s.n);
        }
        for (int64_t at = 0; first != last; ++first) {
            ops.copy_from_host(first->value, host.data() + at);
            at += first->numel();
        }
    }
}
}  // namespace

void ParameterSet::initialize(uint64_t seed) {
    if (dtype() == DType::F64) initialize_as<double>(params_, *ops_, seed);
    else initialize_as<float>(params_, *ops_, seed);
    refresh_work();
}

const Param& ParameterSet::find(const std::string& name) const {
    for (const Param& p : params_)
        if (p.name == name) return p;
    throw std::logic_error("no parameter " + name);
}

int64_t ParameterSet::numel() const {
    int64_t n = 0;
    for (const Param& p : params_)
        if (__builtin_add_overflow(n, p.numel(), &n)) throw std::length_error("parameters too large");
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

std::vector<std::string> ParameterSet::names() const {
    std::vector<std::string> out;
    for (const Param& p : params_) {
        if (!p.is_expert_stack()) out.push_back(p.name);
        else
            for (int64_t i = 0; i < p.shape[0]; ++i) out.push_back(expert_name(p.name, p.expert_offset + int(i)));
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
