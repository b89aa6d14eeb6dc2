#include "engine/params/parameters.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <utility>
#include <vector>

#include "engine/params/rng.h"

namespace moe {

int64_t Param::numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
        if (d < 0 || __builtin_mul_overflow(n, d, &n)) throw std::length_error("parameter " + name + " too large");
    return n;
}

int64_t FileTensor::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // a block of a parameter whose size is checked
    return n;
}

std::vector<ParamPart> Param::file_parts() const {
    return parts.empty() ? std::vector<ParamPart>{{name, shape[is_expert_stack() ? 1 : 0]}} : parts;
}

std::vector<FileTensor> Param::files() const {
    const int64_t experts = is_expert_stack() ? shape[0] : 1;
    const std::vector<int64_t> one(shape.begin() + (is_expert_stack() ? 1 : 0), shape.end());
    const int64_t per_expert = numel() / experts, per_row = one[0] ? per_expert / one[0] : 0;
    std::vector<FileTensor> out;
    for (int64_t e = 0; e < experts; ++e) {
        int64_t row = 0;
        for (const ParamPart& part : file_parts()) {
            std::vector<int64_t> block = one;
            block[0] = part.rows;
            out.push_back({is_expert_stack() ? expert_name(part.name, expert_offset + int(e)) : part.name, block,
                           e * per_expert + row * per_row});
            row += part.rows;
        }
    }
    return out;
}

std::string expert_name(const std::string& pattern, int expert) {
    const size_t at = pattern.find("{e}");
    if (at == std::string::npos) throw std::logic_error("expert parameter name without {e}: " + pattern);
    return pattern.substr(0, at) + std::to_string(expert) + pattern.substr(at + 3);
}

ParameterSet::ParameterSet() = default;
ParameterSet::~ParameterSet() = default;

Param& ParameterSet::add(const std::string& name, std::vector<int64_t> shape, InitSpec init, bool decay,
                         int expert_offset, std::vector<ParamPart> parts) {
    if (ops_) throw std::logic_error("parameter added after allocation: " + name);
    if (!parts.empty()) {
        const size_t rows = expert_offset >= 0 ? 1 : 0;  // the dimension parts split
        int64_t sum = 0;
        bool positive = true;
        for (const ParamPart& part : parts) {
            sum += part.rows;
            positive = positive && part.rows > 0;
        }
        if (!positive || shape.size() <= rows || sum != shape[rows])
            throw std::logic_error("parameter " + name + ": its parts' rows must be positive and add up to its rows");
    }
    Param p;
    p.name = name;
    p.shape = std::move(shape);
    p.init = init;
    p.decay = decay;
    p.expert_offset = expert_offset;
    p.parts = std::move(parts);
    params_.push_back(std::move(p));
    return params_.back();
}

Param& ParameterSet::add_state(const std::string& name, std::vector<int64_t> shape, InitSpec init) {
    if (ops_) throw std::logic_error("state added after allocation: " + name);
    Param p;
    p.name = name;
    p.shape = std::move(shape);
    p.init = init;
    states_.push_back(std::move(p));
    return states_.back();
}

std::vector<const Param*> ParameterSet::stored(Slot slot) const {
    std::vector<const Param*> out;
    for (const Param& p : params_) out.push_back(&p);
    if (slot == Slot::Value)
        for (const Param& p : states_) out.push_back(&p);
    return out;
}

std::vector<Param*> ParameterSet::stored(Slot slot) {
    std::vector<Param*> out;
    for (const Param* p : std::as_const(*this).stored(slot)) out.push_back(const_cast<Param*>(p));
    return out;
}

namespace {

// A tensor of `shape` over the data of `flat` (1-D, at least as many elements).
Tensor shaped(const Tensor& flat, const std::vector<int64_t>& shape) {
    switch (shape.size()) {
        case 1: return Tensor(flat.data, flat.dtype, {shape[0]});
        case 2: return Tensor(flat.data, flat.dtype, {shape[0], shape[1]});
        case 3: return Tensor(flat.data, flat.dtype, {shape[0], shape[1], shape[2]});
    }
    throw std::logic_error("parameter of rank " + std::to_string(shape.size()));
}

// What allocate() carves for each parameter, in one order: a dry run over
// arenas without a backend sizes them (planned_bytes), the same run over
// allocated ones places the tensors. The masters and moments are whole, or a
// chunk when split; gradients and the working copy whole, padded to a
// multiple of the group. Inference carves no gradients and no moments.
void lay_out(std::deque<Param>& params, std::deque<Param>& states, const Precision& pr, const OptimizerShards& shards,
             ParameterSet::Use use, ParameterSet::Arenas& a) {
    const bool separate_work = pr.work != pr.master;
    for (Param& p : params) {
        p.shards = p.is_expert_stack() ? shards.experts : shards.replicated;
        p.chunk = (p.numel() + p.shards.size - 1) / p.shards.size;
    }
    // Whole (shaped), or this rank's chunk of the optimizer state.
    const auto state = [&](Arena& arena, const Param& p) {
        return p.split() ? arena.take(pr.master, {p.chunk}) : shaped(arena.take(pr.master, {p.numel()}), p.shape);
    };
    for (Param& p : params)
        if (!p.split() || separate_work) p.value = state(a.masters, p);  // else: a chunk of the working copy
    if (use == ParameterSet::Use::training) {
        for (Param& p : params) {
            p.grad_flat = a.grads.take(pr.master, {p.padded_numel()});
            p.grad = shaped(p.grad_flat, p.shape);
        }
        for (Param& p : params) p.m = state(a.m, p);
        for (Param& p : params) p.v = state(a.v, p);
    }
    for (Param& p : params) {
        if (separate_work || p.split()) {
            p.work_flat = a.work.take(pr.work, {p.padded_numel()});
            p.work = shaped(p.work_flat, p.shape);
            if (!separate_work) p.value = p.work_flat.rows(p.chunk_begin(), p.chunk_begin() + p.chunk);
        } else {
            p.work = p.value;
            p.work_flat = shaped(p.value, {p.numel()});
        }
    }
    for (Param& p : states) {
        p.chunk = p.numel();
        p.value = p.work = shaped(a.masters.take(pr.master, {p.numel()}), p.shape);
        p.work_flat = shaped(p.value, {p.numel()});
    }
}

}  // namespace

ParameterBytes ParameterSet::planned_bytes(const Precision& precision, const OptimizerShards& shards,
                                           Use use) const {
    std::deque<Param> plan = params_, plan_states = states_;  // laid out dry: no memory behind the tensors
    Arenas a;
    lay_out(plan, plan_states, precision, shards, use, a);
    ParameterBytes b;
    b.masters = a.masters.bytes();
    b.gradients = a.grads.bytes();
    b.working_copy = a.work.bytes();
    size_t total = 0;
    if (__builtin_add_overflow(a.m.bytes(), a.v.bytes(), &b.moments) ||
        __builtin_add_overflow(b.masters, b.gradients, &total) || __builtin_add_overflow(total, b.working_copy, &total) ||
        __builtin_add_overflow(total, b.moments, &total))
        throw std::length_error("parameters too large");
    return b;
}

void ParameterSet::allocate(Ops& ops, const Precision& precision, const OptimizerShards& shards, Use use) {
    if (ops_) throw std::logic_error("parameters allocated twice");
    ops_ = &ops;
    precision_ = precision;
    auto a = std::unique_ptr<Arenas>(new Arenas{Arena(ops), Arena(ops), Arena(ops), Arena(ops), Arena(ops)});
    lay_out(params_, states_, precision, shards, use, *a);  // sizes the arenas
    for (Arena* arena : {&a->masters, &a->grads, &a->m, &a->v, &a->work})
        if (arena->bytes() > 0) arena->allocate();
    lay_out(params_, states_, precision, shards, use, *a);  // places the tensors
    arenas_ = std::move(a);
}

void ParameterSet::refresh_work() {
    for (Param& p : params_) {
        if (!p.split()) {
            if (p.work.data != p.value.data) ops_->copy(p.work, p.value);
            continue;
        }
        Tensor mine = p.work_flat.rows(p.chunk_begin(), p.chunk_begin() + p.chunk);
        if (mine.data != p.value.data) ops_->copy(mine, p.value);
        p.shards.comm->all_gather(mine.data, p.work_flat.data, p.chunk, p.work_flat.dtype);
    }
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
template <class T> void initialize_as(ParameterSet& set, std::deque<Param>& params, uint64_t seed) {
    constexpr int64_t kBatchValues = int64_t(1) << 26;
    struct Slice {
        const Param* param;
        std::string name;  // the file-level tensor's, naming its stream
        int64_t at, n;
    };
    std::vector<T> host;
    for (auto first = params.begin(); first != params.end();) {
        std::vector<Slice> slices;
        int64_t total = 0;
        auto last = first;
        for (; last != params.end() && (last == first || total + last->numel() <= kBatchValues); ++last) {
            for (const FileTensor& f : last->files()) slices.push_back({&*last, f.name, total + f.offset, f.numel()});
            total += last->numel();
        }
        host.resize(size_t(total));
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t i = 0; i < slices.size(); ++i) {
            const Slice& s = slices[i];
            Rng rng(seed, s.name);
            fill(s.param->init, rng, host.data() + s.at, s.n);
        }
        for (int64_t at = 0; first != last; ++first) {
            set.upload(*first, ParameterSet::Slot::Value, host.data() + at);
            at += first->numel();
        }
    }
}
}  // namespace

void ParameterSet::initialize(uint64_t seed) {
    for (std::deque<Param>* list : {&params_, &states_}) {
        if (dtype() == DType::F64) initialize_as<double>(*this, *list, seed);
        else initialize_as<float>(*this, *list, seed);
    }
    refresh_work();
}

namespace {
const Tensor& slot_of(const Param& p, ParameterSet::Slot slot) {
    switch (slot) {
        case ParameterSet::Slot::Value: return p.value;
        case ParameterSet::Slot::Grad: return p.grad;
        case ParameterSet::Slot::M: return p.m;
        case ParameterSet::Slot::V: return p.v;
    }
    throw std::logic_error("unknown slot");
}
}  // namespace

void ParameterSet::download(const Param& p, Slot slot, void* host) const {
    const Tensor& t = slot_of(p, slot);
    if (!p.split() || slot == Slot::Grad) return ops_->copy_to_host(host, t);
    // The group's chunks side by side, padded; the whole is their first numel elements.
    const size_t elem = dtype_size(t.dtype);
    std::vector<char> all(size_t(p.padded_numel()) * elem);
    char* mine = all.data() + size_t(p.chunk_begin()) * elem;
    ops_->copy_to_host(mine, t);
    p.shards.comm->all_gather(mine, all.data(), p.chunk, t.dtype);
    std::memcpy(host, all.data(), size_t(p.numel()) * elem);
}

void ParameterSet::upload(Param& p, Slot slot, const void* host) {
    const Tensor& t = slot_of(p, slot);
    if (!p.split() || slot == Slot::Grad) return ops_->copy_from_host(t, host);
    const int64_t have = std::max<int64_t>(0, std::min(p.chunk, p.numel() - p.chunk_begin()));
    const size_t elem = dtype_size(t.dtype);
    if (have > 0) ops_->copy_from_host(t.rows(0, have), static_cast<const char*>(host) + size_t(p.chunk_begin()) * elem);
    if (have < p.chunk) ops_->zero(t.rows(have, p.chunk));  // the padding past the end
}

bool ParameterSet::split() const {
    for (const Param& p : params_)
        if (p.split()) return true;
    return false;
}

const Param& ParameterSet::find(const std::string& name) const {
    for (const Param* p : stored(Slot::Value))
        if (p->name == name) return *p;
    throw std::logic_error("no parameter " + name);
}

int64_t ParameterSet::numel() const {
    int64_t n = 0;
    for (const Param& p : params_)
        if (__builtin_add_overflow(n, p.numel(), &n)) throw std::length_error("parameters too large");
    return n;
}

std::vector<NamedTensor> ParameterSet::named(Slot slot) const {
    if (slot != Slot::Grad && split())
        throw std::logic_error("named(): the optimizer state is split over ranks; use download()");
    std::vector<NamedTensor> out;
    for (const Param* p : stored(slot)) {
        const Tensor& t = slot_of(*p, slot);
        for (const FileTensor& f : p->files()) {
            char* at = t.empty() ? nullptr : static_cast<char*>(t.data) + size_t(f.offset) * dtype_size(t.dtype);
            out.push_back({f.name, shaped(Tensor(at, t.dtype, {}), f.shape)});
        }
    }
    return out;
}

std::vector<std::string> ParameterSet::names() const {
    std::vector<std::string> out;
    for (const Param* p : stored(Slot::Value))
        for (const FileTensor& f : p->files()) out.push_back(f.name);
    return out;
}

std::set<std::string> ParameterSet::experts_elsewhere(int num_experts) const {
    std::set<std::string> names;
    for (const Param& p : params_) {
        if (!p.is_expert_stack()) continue;
        for (int e = 0; e < num_experts; ++e)
            if (e < p.expert_offset || e >= p.expert_offset + p.shape[0])
                for (const ParamPart& part : p.file_parts()) names.insert(expert_name(part.name, e));
    }
    return names;
}

}  // namespace moe
