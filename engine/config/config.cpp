// Config from YAML. One schema table (key path -> field, allowed range or
// choices) drives parsing, unknown-key suggestions, --set overrides,
// validation and to_yaml, so a key is declared exactly once.
#include "engine/config/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <variant>

namespace moe {
namespace {

// ---- the schema --------------------------------------------------------------

using Field =
    std::variant<int*, std::uint64_t*, double*, std::optional<double>*, bool*, std::string*, RouterKind*, Recompute*,
                 LrSchedule*, DecayShape*, RouterScore*, BalanceScope*>;

// The names of an enum's values, in declaration order: what YAML spells.
const std::vector<std::string>& names(const RouterKind*) {
    static const std::vector<std::string> n = {"learned", "token_id"};
    return n;
}
const std::vector<std::string>& names(const RouterScore*) {
    static const std::vector<std::string> n = {"softmax", "sigmoid"};
    return n;
}
const std::vector<std::string>& names(const BalanceScope*) {
    static const std::vector<std::string> n = {"micro_batch", "global_batch"};
    return n;
}
const std::vector<std::string>& names(const Recompute*) {
    static const std::vector<std::string> n = {"none", "experts", "full"};
    return n;
}
const std::vector<std::string>& names(const LrSchedule*) {
    static const std::vector<std::string> n = {"cosine", "constant", "wsd"};
    return n;
}
const std::vector<std::string>& names(const DecayShape*) {
    static const std::vector<std::string> n = {"linear", "sqrt", "cosine"};
    return n;
}

// The values a numeric key accepts: an interval, open or closed at each end.
struct Range {
    double lo, hi;
    bool lo_open, hi_open;
    const char* text;  // how errors state it: "must be > 0"
    bool contains(double v) const { return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi); }
};
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr Range kAny{-kInf, kInf, false, false, "finite"};
constexpr Range kPositive{0, kInf, true, false, "> 0"};
constexpr Range kNonNegative{0, kInf, false, false, ">= 0"};
constexpr Range kAtLeastOne{1, kInf, false, false, ">= 1"};
constexpr Range kThreads{0, 1024, false, false, "in [0, 1024] (0: every core)"};
// Deeper than any model trained; the plan of a model stays quick to make.
constexpr Range kLayers{1, 10000, false, false, "in [1, 10000]"};
constexpr Range kFraction{0, 1, false, true, "in [0, 1)"};     // Adam betas
constexpr Range kShare{0, 1, true, false, "in (0, 1]"};
constexpr Range kProbability{0, 1, true, true, "in (0, 1)"};  // sigmoid outputs

struct Key {
    std::string path;          // "model.moe.top_k"
    Field (*field)(Config&);   // where the value lives
    Range range;               // numeric keys; unused for bools and strings
    std::vector<std::string> choices;  // string keys: allowed values, empty: any
};

// The path is the member expression itself, so the YAML key cannot drift from the field.
#define MOE_KEY(member, range) Key{#member, [](Config& c) -> Field { return &c.member; }, range, {}}
#define MOE_ENUM(member, ...) Key{#member, [](Config& c) -> Field { return &c.member; }, kAny, {__VA_ARGS__}}

// Keys of one section stay together: to_yaml writes each section header once.
const std::vector<Key>& schema() {
    static const std::vector<Key> keys = {
        MOE_KEY(model.vocab_size, kPositive),
        MOE_KEY(model.hidden_size, kPositive),
        MOE_KEY(model.num_layers, kLayers),
        MOE_KEY(model.num_heads, kPositive),
        MOE_KEY(model.num_kv_heads, kPositive),
        MOE_KEY(model.qk_norm, kAny),
        MOE_KEY(model.tie_embeddings, kAny),
        MOE_KEY(model.rope_theta, kPositive),
        MOE_KEY(model.norm_eps, kPositive),
        MOE_KEY(model.init_std, kPositive),
        MOE_KEY(model.moe.num_experts, kPositive),
        MOE_KEY(model.moe.top_k, kPositive),
        MOE_KEY(model.moe.expert_hidden_size, kPositive),
        MOE_KEY(model.moe.router, kAny),
        MOE_KEY(model.moe.normalize_top_k, kAny),
        MOE_KEY(model.moe.score, kAny),
        MOE_KEY(model.moe.groups, kAtLeastOne),
        MOE_KEY(model.moe.group_limit, kNonNegative),
        MOE_KEY(model.moe.expert_bias_rate, kNonNegative),
        MOE_KEY(model.moe.load_balancing_weight, kNonNegative),
        MOE_KEY(model.moe.balance_scope, kAny),
        MOE_KEY(model.moe.z_loss_weight, kNonNegative),
        MOE_KEY(model.moe.capacity_factor, kPositive),
        MOE_KEY(model.moe.shared_experts, kNonNegative),
        MOE_KEY(model.moe.shared_expert_hidden_size, kNonNegative),
        MOE_KEY(model.dynamics.enabled, kAny),
        MOE_KEY(model.dynamics.shared, kAny),
        MOE_KEY(model.dynamics.controller_size, kPositive),
        MOE_KEY(model.dynamics.dt, kPositive),
        MOE_KEY(model.dynamics.beta_max, kPositive),
        MOE_KEY(model.dynamics.velocity_max, kPositive),
        MOE_KEY(model.dynamics.mu_min, kAny),
        MOE_KEY(model.dynamics.mu_max, kAny),
        MOE_KEY(model.dynamics.init_alpha, kProbability),
        MOE_KEY(model.dynamics.init_beta, kPositive),
        MOE_KEY(model.dynamics.init_gate, kProbability),
        MOE_KEY(data.train, kAny),
        MOE_KEY(data.val, kAny),
        MOE_KEY(data.tokenizer, kAny),
        MOE_KEY(train.seq_len, kPositive),
        MOE_KEY(train.micro_batch_size, kPositive),
        MOE_KEY(train.grad_accum_steps, kPositive),
        MOE_KEY(train.steps, kPositive),
        MOE_KEY(train.recompute, kAny),
        MOE_KEY(optimizer.lr, kPositive),
        MOE_KEY(optimizer.min_lr, kNonNegative),
        MOE_KEY(optimizer.warmup_steps, kNonNegative),
        MOE_KEY(optimizer.schedule, kAny),
        MOE_KEY(optimizer.decay_fraction, kShare),
        MOE_KEY(optimizer.decay_shape, kAny),
        MOE_KEY(optimizer.beta1, kFraction),
        MOE_KEY(optimizer.beta2, kFraction),
        MOE_KEY(optimizer.eps, kPositive),
        MOE_KEY(optimizer.weight_decay, kNonNegative),
        MOE_KEY(optimizer.grad_clip, kNonNegative),
        MOE_KEY(eval.every, kNonNegative),
        MOE_KEY(eval.batches, kAtLeastOne),
        MOE_KEY(log.every, kAtLeastOne),
        MOE_KEY(log.starved_share, kFraction),
        MOE_KEY(log.starved_intervals, kAtLeastOne),
        MOE_KEY(checkpoint.every, kNonNegative),
        MOE_KEY(checkpoint.keep, kAtLeastOne),
        MOE_KEY(run.seed, kAny),
        MOE_KEY(run.out_dir, kAny),
        MOE_ENUM(run.device, "cpu", "cuda", "auto"),
        MOE_ENUM(run.nan_policy, "stop", "skip"),
        MOE_KEY(run.threads, kThreads),
        MOE_KEY(parallel.expert_parallel, kAtLeastOne),
        MOE_KEY(parallel.allow_shared_gpu, kAny),
        MOE_ENUM(parallel.comm, "auto", "mpi", "nccl"),
        MOE_KEY(parallel.collective_timeout_s, kNonNegative),
        MOE_KEY(parallel.shard_optimizer, kAny),
    };
    return keys;
}

#undef MOE_KEY
#undef MOE_ENUM

[[noreturn]] void fail(const std::string& where, const std::string& problem) { throw ConfigError(where + problem); }

// ---- paths -------------------------------------------------------------------

std::string join(const std::string& section, const std::string& name) {
    return section.empty() ? name : section + "." + name;
}

std::vector<std::string> split(const std::string& path) {
    std::vector<std::string> parts;
    size_t start = 0;
    for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1)
        parts.push_back(path.substr(start, dot - start));
    parts.push_back(path.substr(start));
    return parts;
}

const Key* find_key(const std::string& path) {
    for (const Key& k : schema())
        if (k.path == path) return &k;
    return nullptr;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// "" is the root; a section is any proper prefix of a key path.
bool is_section(const std::string& path) {
    if (path.empty()) return true;
    for (const Key& k : schema())
        if (starts_with(k.path, path + ".")) return true;
    return false;
}

// The names directly inside a section (keys and subsections), in schema order.
std::vector<std::string> children(const std::string& section) {
    const std::string prefix = section.empty() ? "" : section + ".";
    std::vector<std::string> names;
    for (const Key& k : schema()) {
        if (!starts_with(k.path, prefix)) continue;
        const std::string rest = k.path.substr(prefix.size());
        const std::string name = rest.substr(0, rest.find('.'));
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    }
    return names;
}

std::string join_list(const std::vector<std::string>& items) {
    std::string out;
    for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
    return out;
}

// ---- suggestions for unknown keys ---------------------------------------------

// Edit distance counting a swap of neighbours as one edit ("modle" -> "model").
size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i)
        for (size_t j = 1; j <= b.size(); ++j) {
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    return d[a.size()][b.size()];
}

// The closest candidate, or "" when none is close enough to be a likely typo.
std::string nearest(const std::string& name, const std::vector<std::string>& candidates) {
    std::string best;
    size_t best_distance = std::max<size_t>(1, name.size() / 3) + 1;
    for (const std::string& c : candidates) {
        const size_t d = edit_distance(name, c);
        if (d < best_distance) best = c, best_distance = d;
    }
    return best;
}

// "unknown key 'model.hiden_size' (did you mean 'model.hidden_size'?)". The
// path may be wrong at any level (a --set key); the first wrong name is
// reported with a suggestion among its siblings, else the siblings are listed.
std::string unknown_key(const std::string& path) {
    const std::vector<std::string> parts = split(path);
    std::string parent;
    size_t level = 0;
    while (level + 1 < parts.size() && is_section(join(parent, parts[level]))) parent = join(parent, parts[level++]);
    const std::string unknown = join(parent, parts[level]);
    if (find_key(unknown)) return "'" + unknown + "' takes a value, it has no key '" + path.substr(unknown.size() + 1) + "'";

    const std::string problem = std::string("unknown ") + (parent.empty() ? "section" : "key") + " '" + unknown + "'";
    const std::vector<std::string> siblings = children(parent);
    const std::string best = nearest(parts[level], siblings);
    if (best.empty())
        return problem + " (" + (parent.empty() ? "sections" : "keys in " + parent) + ": " + join_list(siblings) + ")";
    std::string suggestion = join(parent, best);
    const std::string rest = path.substr(unknown.size());  // ".moe.top_k" after a misspelt section
    if (!rest.empty() && (find_key(suggestion + rest) || is_section(suggestion + rest))) suggestion += rest;
    return problem + " (did you mean '" + suggestion + "'?)";
}

// ---- values: text <-> field --------------------------------------------------

std::string describe(const YAML::Node& node) {
    if (node.IsNull()) return "null";
    if (node.IsMap()) return "a mapping";
    if (node.IsSequence()) return "a sequence";
    const std::string& v = node.Scalar();
    return "'" + (v.size() > 80 ? v.substr(0, 80) + "...' (" + std::to_string(v.size()) + " characters)" : v + "'");
}

// Whole-text integer: optional sign, then digits only (no 1.0, 0x10, 1e3).
bool to_integer(const std::string& s, long long& out) {
    const size_t first = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (s.size() <= first || !std::all_of(s.begin() + first, s.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
        return false;
    errno = 0;
    out = std::strtoll(s.c_str(), nullptr, 10);
    return errno == 0;
}

// Each reader returns false when the node does not hold a value of the field's type.
bool read(const YAML::Node& node, int& out) {
    long long v;
    if (!node.IsScalar() || !to_integer(node.Scalar(), v) || v < INT_MIN || v > INT_MAX) return false;
    out = static_cast<int>(v);
    return true;
}

bool read(const YAML::Node& node, std::uint64_t& out) {
    if (!node.IsScalar()) return false;
    const std::string& s = node.Scalar();
    if (s.empty() || !std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) return false;
    errno = 0;
    out = std::strtoull(s.c_str(), nullptr, 10);
    return errno == 0;
}

// One number syntax, decimal: [sign] digits [. digits] [e [sign] digits]
// (strtod alone would also take hex such as 0x10, inf and nan).
bool is_decimal(const std::string& s) {
    size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
    const auto digits = [&] {
        const size_t start = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
        return i - start;
    };
    size_t mantissa = digits();
    if (i < s.size() && s[i] == '.') {
        ++i;
        mantissa += digits();
    }
    if (mantissa == 0) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
        if (digits() == 0) return false;
    }
    return i == s.size();
}

bool read(const YAML::Node& node, double& out) {
    if (!node.IsScalar() || !is_decimal(node.Scalar())) return false;
    out = std::strtod(node.Scalar().c_str(), nullptr);
    return std::isfinite(out);
}

bool read(const YAML::Node& node, std::optional<double>& out) {
    if (node.IsNull()) {
        out.reset();
        return true;
    }
    double v;
    if (!read(node, v)) return false;
    out = v;
    return true;
}

// Only the two YAML 1.2 spellings: yes/no/on/off are too easy to misread.
bool read(const YAML::Node& node, bool& out) {
    if (!node.IsScalar() || (node.Scalar() != "true" && node.Scalar() != "false")) return false;
    out = node.Scalar() == "true";
    return true;
}

// An empty value (null) is the empty string, so `val:` means "none".
bool read(const YAML::Node& node, std::string& out) {
    if (!node.IsNull() && !node.IsScalar()) return false;
    out = node.IsNull() ? "" : node.Scalar();
    return true;
}

// An enum's value by its name.
template <class E, class = std::enable_if_t<std::is_enum_v<E>>> bool read(const YAML::Node& node, E& out) {
    if (!node.IsScalar()) return false;
    const std::vector<std::string>& n = names(&out);
    const auto at = std::find(n.begin(), n.end(), node.Scalar());
    if (at == n.end()) return false;
    out = E(at - n.begin());
    return true;
}

std::string type_name(const int*) { return "an integer"; }
std::string type_name(const std::uint64_t*) { return "a non-negative integer"; }
std::string type_name(const double*) { return "a number"; }
std::string type_name(const std::optional<double>*) { return "a number or null"; }
std::string type_name(const bool*) { return "true or false"; }
std::string type_name(const std::string*) { return "a string"; }
template <class E, class = std::enable_if_t<std::is_enum_v<E>>> std::string type_name(const E* kind) {
    return "one of " + join_list(names(kind));
}

void assign(const Key& key, const YAML::Node& node, Config& c, const std::string& where) {
    std::visit(
        [&](auto* field) {
            if (!read(node, *field)) fail(where, key.path + " must be " + type_name(field) + ", got " + describe(node));
        },
        key.field(c));
}

std::string format(int v) { return std::to_string(v); }
std::string format(std::uint64_t v) { return std::to_string(v); }
std::string format(bool v) { return v ? "true" : "false"; }

// The shortest text that reads back to exactly the same double, with whole
// numbers below 1e17 written out (10000, not 1e+04).
std::string format(double v) {
    const int integer_digits = std::fabs(v) >= 1 ? static_cast<int>(std::log10(std::fabs(v))) + 1 : 1;
    char text[32];
    for (int digits = 1; digits <= 17; ++digits) {
        std::snprintf(text, sizeof text, "%.*g", std::min(std::max(digits, integer_digits), 17), v);
        if (std::strtod(text, nullptr) == v) break;
    }
    return text;
}

std::string format(const std::optional<double>& v) { return v ? format(*v) : "null"; }

// Always double-quoted, so no string can be mistaken for a number, bool or null.
std::string format(const std::string& s) {
    std::string out = "\"";
    for (const char ch : s) {
        const auto byte = static_cast<unsigned char>(ch);
        if (ch == '"' || ch == '\\') {
            out += '\\';
            out += ch;
        } else if (byte < 0x20 || byte == 0x7f) {
            char escape[8];
            std::snprintf(escape, sizeof escape, "\\x%02x", byte);
            out += escape;
        } else {
            out += ch;
        }
    }
    return out + "\"";
}

// An enum as its name, quoted like every string.
template <class E, class = std::enable_if_t<std::is_enum_v<E>>> std::string format(E kind) {
    return format(names(&kind)[size_t(kind)]);
}

// ---- validation ----------------------------------------------------------------

const std::string kWhere = "config: ";

template <class Number>  // int, uint64_t, double
std::enable_if_t<std::is_arithmetic_v<Number>> check_value(const Key& key, Number v) {
    if (!key.range.contains(static_cast<double>(v)))
        fail(kWhere, key.path + " must be " + key.range.text + ", got " + format(v));
}
void check_value(const Key& key, const std::optional<double>& v) {
    if (v) check_value(key, *v);
}
void check_value(const Key&, bool) {}
template <class E> std::enable_if_t<std::is_enum_v<E>> check_value(const Key&, E) {}  // read() checked it
void check_value(const Key& key, const std::string& v) {
    if (!key.choices.empty() && std::find(key.choices.begin(), key.choices.end(), v) == key.choices.end())
        fail(kWhere, key.path + " must be one of " + join_list(key.choices) + ", got '" + v + "'");
}

// Rules between keys; every single key is already within its range here.
// The learned router's options (docs/MODEL-OPTIONS.md "Router options").
void check_router_options(const MoeConfig& moe) {
    const auto need = [](bool ok, const std::string& problem) {
        if (!ok) fail(kWhere, problem);
    };
    const bool learned = moe.router == RouterKind::learned;
    need(learned || (moe.score == RouterScore::softmax && moe.groups == 1),
         "model.moe.score and model.moe.groups apply to the learned router: set model.moe.router to learned, or "
         "leave them at softmax and 1");
    need(learned || moe.balance_scope == BalanceScope::micro_batch,
         "model.moe.balance_scope applies to the learned router's balancing loss: set model.moe.router to learned, "
         "or leave balance_scope at micro_batch");
    need(learned || !moe.expert_bias_rate,
         "model.moe.expert_bias_rate applies to the learned router: set model.moe.router to learned, or remove "
         "expert_bias_rate");
    need(moe.score != RouterScore::sigmoid || moe.z_loss_weight == 0,
         "model.moe.z_loss_weight (" + format(moe.z_loss_weight) +
             ") is the softmax's z-loss: with model.moe.score sigmoid set it to 0");
    need(moe.groups <= 64 && moe.num_experts % moe.groups == 0,
         "model.moe.groups (" + std::to_string(moe.groups) + ") must divide model.moe.num_experts (" +
             std::to_string(moe.num_experts) + ") and be at most 64");
    need(moe.groups > 1 || moe.group_limit == 0,
         "model.moe.group_limit applies to group-limited routing: set model.moe.groups above 1, or group_limit to 0");
    const int limit = moe.group_limit ? moe.group_limit : moe.groups;
    need(limit <= moe.groups, "model.moe.group_limit (" + std::to_string(moe.group_limit) +
                                  ") must be <= model.moe.groups (" + std::to_string(moe.groups) + ")");
    const int reachable = limit * (moe.num_experts / moe.groups);
    need(moe.top_k <= reachable, "model.moe.top_k (" + std::to_string(moe.top_k) + ") must be <= the experts of " +
                                     std::to_string(limit) + " group(s) (" + std::to_string(reachable) +
                                     "): raise model.moe.group_limit or lower model.moe.top_k");
}

// Shared experts (docs/MODEL-OPTIONS.md "Shared experts").
void check_shared_experts(const MoeConfig& moe) {
    const auto need = [](bool ok, const std::string& problem) {
        if (!ok) fail(kWhere, problem);
    };
    need(moe.shared_experts > 0 || moe.shared_expert_hidden_size == 0,
         "model.moe.shared_expert_hidden_size applies to shared experts: set model.moe.shared_experts above 0, or "
         "shared_expert_hidden_size to 0");
    // Their fused inner size is one GEMM dimension, indexed with 32-bit integers.
    need(moe.shared_inner() <= INT32_MAX,
         "model.moe.shared_experts x the shared expert hidden size (" + std::to_string(moe.shared_experts) + " x " +
             std::to_string(moe.shared_hidden()) + " = " + std::to_string(moe.shared_inner()) +
             ") must be below 2^31: lower model.moe.shared_experts or model.moe.shared_expert_hidden_size");
}

void check_consistency(const Config& c) {
    const ModelConfig& m = c.model;
    const auto need = [](bool ok, const std::string& problem) {
        if (!ok) fail(kWhere, problem);
    };
    const auto multiple = [](const std::string& a, int va, const std::string& b, int vb) {
        return a + " (" + std::to_string(va) + ") must be a multiple of " + b + " (" + std::to_string(vb) + ")";
    };
    need(!c.data.train.empty(), "data.train is empty: set data.train to a glob of token shards (see README)");
    need(!c.data.tokenizer.empty(), "data.tokenizer is empty: set it to bytes, the path of the SentencePiece model "
                                    "that made the shards, or none (ids made elsewhere, such as llm.c's)");
    need(m.hidden_size % m.num_heads == 0, multiple("model.hidden_size", m.hidden_size, "model.num_heads", m.num_heads));
    need(m.num_heads % m.num_kv_heads == 0, multiple("model.num_heads", m.num_heads, "model.num_kv_heads", m.num_kv_heads));
    need(m.head_dim() % 2 == 0, "the head size model.hidden_size / model.num_heads = " + std::to_string(m.head_dim()) +
                                    " must be even for RoPE: change model.hidden_size or model.num_heads");
    need(m.moe.top_k <= m.moe.num_experts, "model.moe.top_k (" + std::to_string(m.moe.top_k) +
                                               ") must be <= model.moe.num_experts (" +
                                               std::to_string(m.moe.num_experts) + ")");
    need(m.moe.router != RouterKind::token_id || m.moe.top_k == 1,
         "model.moe.router token_id sends each token to exactly one expert: set model.moe.top_k to 1 (got " +
             std::to_string(m.moe.top_k) + ")");
    check_router_options(m.moe);
    check_shared_experts(m.moe);
    if (m.moe.num_experts % c.parallel.expert_parallel != 0) {  // the layouts that work, in the message
        std::vector<std::string> divisors;
        for (int d = 1; d <= m.moe.num_experts; ++d)
            if (m.moe.num_experts % d == 0) divisors.push_back(std::to_string(d));
        fail(kWhere, multiple("model.moe.num_experts", m.moe.num_experts, "parallel.expert_parallel",
                              c.parallel.expert_parallel) +
                         ": set parallel.expert_parallel to one of " + join_list(divisors));
    }
    need(c.optimizer.min_lr <= c.optimizer.lr, "optimizer.min_lr (" + format(c.optimizer.min_lr) +
                                                   ") must be <= optimizer.lr (" + format(c.optimizer.lr) + ")");
    need(c.optimizer.warmup_steps <= c.train.steps, "optimizer.warmup_steps (" + format(c.optimizer.warmup_steps) +
                                                        ") must be <= train.steps (" + format(c.train.steps) + ")");
    if (c.optimizer.schedule == LrSchedule::wsd) {
        const int decay = wsd_decay_steps(c.optimizer, c.train.steps);
        need(c.optimizer.warmup_steps + decay <= c.train.steps,
             "optimizer.warmup_steps (" + format(c.optimizer.warmup_steps) + ") and the wsd decay (" +
                 format(c.optimizer.decay_fraction) + " of train.steps: " + std::to_string(decay) +
                 " steps) must fit in train.steps (" + format(c.train.steps) +
                 "): lower optimizer.decay_fraction or optimizer.warmup_steps");
    }
    need(m.dynamics.mu_min <= m.dynamics.mu_max, "model.dynamics.mu_min (" + format(m.dynamics.mu_min) +
                                                     ") must be <= model.dynamics.mu_max (" +
                                                     format(m.dynamics.mu_max) + ")");
    // Token slots of a micro-batch are indexed with 32-bit integers.
    const int64_t slots = int64_t(c.train.micro_batch_size) * c.train.seq_len * m.moe.top_k;
    need(slots <= INT32_MAX, "train.micro_batch_size x train.seq_len x model.moe.top_k (" + std::to_string(slots) +
                                 " token slots) must be below 2^31: lower train.micro_batch_size or train.seq_len");
}

void validate(Config& c) {
    for (const Key& key : schema()) std::visit([&](auto* field) { check_value(key, *field); }, key.field(c));
    check_consistency(c);
}

// ---- reading -------------------------------------------------------------------

YAML::Node load_yaml(const std::string& text, const std::string& where, const std::string& hint = "") {
    try {
        return YAML::Load(text);
    } catch (const YAML::Exception& e) {
        const std::string at = e.mark.is_null() ? "" : " at line " + std::to_string(e.mark.line + 1) + ", column " +
                                                           std::to_string(e.mark.column + 1);
        fail(where, "YAML syntax error" + at + ": " + e.msg + hint);
    }
}

void read_section(const YAML::Node& node, const std::string& section, Config& c) {
    std::set<std::string> seen;
    for (const auto& entry : node) {
        const std::string path = join(section, entry.first.Scalar());
        const YAML::Node& value = entry.second;
        if (!seen.insert(path).second) fail(kWhere, "duplicate key '" + path + "': keep one");
        if (const Key* key = find_key(path)) {
            assign(*key, value, c, kWhere);
        } else if (is_section(path)) {
            if (value.IsNull()) continue;  // a section with nothing under it
            if (!value.IsMap())
                fail(kWhere, path + " must be a section (keys indented below it, such as " +
                                 children(path).front() + "), got " + describe(value));
            read_section(value, path, c);
        } else {
            fail(kWhere, unknown_key(path));
        }
    }
}

void apply_override(const std::string& text, Config& c) {
    const std::string where = "config: --set '" + text + "': ";
    const size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0)
        fail(kWhere, "--set '" + text + "' is malformed: write key=value, e.g. --set train.steps=50");
    const std::string path = text.substr(0, eq);
    const Key* key = find_key(path);
    if (!key && is_section(path))
        fail(where, "'" + path + "' is a section: set one of its keys, e.g. " + join(path, children(path).front()));
    if (!key) fail(where, unknown_key(path));
    const YAML::Node value =
        load_yaml(text.substr(eq + 1), where, " (quote a string value: --set '" + path + "=\"...\"')");
    assign(*key, value, c, where);
}

// A config is a small regular file: a FIFO or a device (/dev/zero) is refused
// before anything is read from it, so it can neither block nor fill memory.
std::string read_file(const std::string& path) {
    constexpr off_t kMaxBytes = 16 << 20;
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) fail(kWhere, "cannot read '" + path + "': " + std::strerror(errno));
    struct stat st {};
    const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    if (!regular || st.st_size > kMaxBytes) {
        ::close(fd);
        fail(kWhere, "'" + path + "' " +
                         (regular ? "is " + std::to_string(st.st_size) + " bytes: a config is a YAML file of at most 16 MiB"
                                  : std::string("is not a regular file: name a YAML config file")));
    }
    std::string text(size_t(st.st_size), '\0');
    size_t done = 0;
    while (done < text.size()) {
        const ssize_t got = ::read(fd, text.data() + done, text.size() - done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            const int error = got < 0 ? errno : EIO;
            ::close(fd);
            fail(kWhere, "cannot read '" + path + "': " + std::strerror(error));
        }
        done += size_t(got);
    }
    ::close(fd);
    return text;
}

// source names the text in syntax errors: "'configs/tiny.yaml'".
Config parse(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
    Config c;
    const YAML::Node root = load_yaml(text, "config: " + source + ": ");
    if (root.IsMap())
        read_section(root, "", c);
    else if (!root.IsNull())
        fail(kWhere, "the file must be a mapping of sections (" + join_list(children("")) + "), got " + describe(root));
    for (const std::string& o : overrides) apply_override(o, c);
    validate(c);
    return c;
}

}  // namespace

const char* name_of(RouterKind kind) { return names(&kind)[size_t(kind)].c_str(); }
const char* name_of(Recompute kind) { return names(&kind)[size_t(kind)].c_str(); }
const char* name_of(RouterScore kind) { return names(&kind)[size_t(kind)].c_str(); }
const char* name_of(BalanceScope scope) { return names(&scope)[size_t(scope)].c_str(); }
int wsd_decay_steps(const OptimizerConfig& cfg, int total_steps) {
    return int(std::lround(cfg.decay_fraction * total_steps));
}

const char* name_of(LrSchedule kind) { return names(&kind)[size_t(kind)].c_str(); }
const char* name_of(DecayShape kind) { return names(&kind)[size_t(kind)].c_str(); }

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
    return parse(read_file(path), "'" + path + "'", overrides);
}

Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides) {
    return parse(yaml_text, "<text>", overrides);
}

std::string to_yaml(const Config& config) {
    Config c = config;  // the schema's accessors hand out mutable pointers
    std::string out;
    std::vector<std::string> open;  // the sections of the previous key
    for (const Key& key : schema()) {
        std::vector<std::string> parts = split(key.path);
        const std::string name = parts.back();
        parts.pop_back();
        size_t shared = 0;
        while (shared < std::min(open.size(), parts.size()) && open[shared] == parts[shared]) ++shared;
        if (shared == 0 && !out.empty()) out += "\n";  // a blank line between top-level sections
        for (size_t level = shared; level < parts.size(); ++level)
            out += std::string(2 * level, ' ') + parts[level] + ":\n";
        std::visit([&](auto* field) { out += std::string(2 * parts.size(), ' ') + name + ": " + format(*field) + "\n"; },
                   key.field(c));
        open = parts;
    }
    return out;
}

}  // namespace moe
