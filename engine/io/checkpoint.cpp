#include "engine/io/checkpoint.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "comm/agreement.h"
#include "engine/io/crc32c.h"
#include "engine/io/files.h"
#include "engine/io/safetensors.h"
#include "engine/io/weights_io.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "moe-checkpoint 2";
constexpr const char* kFormat1 = "moe-checkpoint 1";  // FNV-1a, no self-checksum, no data identity
constexpr const char* kInfoFile = "checkpoint.yaml";
constexpr const char* kLatestFile = "latest";
constexpr const char* kChecksumKey = "checksum: ";
constexpr uint64_t kInfoMaxBytes = 16 << 20;
const std::string kStepPrefix = "step-";

std::string step_dir_name(int step) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "step-%08d", step);
    return buf;
}

std::string part_name(const char* kind, int p, int parts) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s-%05d-of-%05d.safetensors", kind, p, parts);
    return buf;
}

std::string hex(uint64_t v, int digits) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%0*" PRIx64, digits, v);
    return buf;
}

// The step of a "step-N" directory name (N below 2^31), or -1.
int step_of(const std::string& name) {
    if (name.rfind(kStepPrefix, 0) != 0 || name.size() == kStepPrefix.size() || name.size() > kStepPrefix.size() + 10)
        return -1;
    const std::string digits = name.substr(kStepPrefix.size());
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return -1;
    const long long step = std::strtoll(digits.c_str(), nullptr, 10);
    return step <= INT32_MAX ? int(step) : -1;
}

void sync_dir(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

// This rank's part of the checkpoint, on the host: its experts under their
// global names and, for part 0, every other tensor, of the values (model) or
// of both moments (optimizer). Every rank calls it: a split parameter is
// gathered from its group; `writes` says whether this rank keeps it.
HostTensors part_of_rank(const ParameterSet& params, bool moments, bool with_replicated, bool writes) {
    const auto take = [&](const Param& p) { return p.is_expert_stack() || with_replicated; };
    HostTensors out;
    if (!moments) {
        collect(params, ParameterSet::Slot::Value, take, writes, "", out);
        return out;
    }
    collect(params, ParameterSet::Slot::M, take, writes, "exp_avg.", out);
    collect(params, ParameterSet::Slot::V, take, writes, "exp_avg_sq.", out);
    return out;
}

// checkpoint.yaml's text, its last line a CRC-32C of all the lines before it.
std::string info_yaml(const Config& cfg, const TrainProgress& progress, int world_size, int expert_parallel,
                      const std::vector<CheckpointFile>& files) {
    YAML::Emitter out;
    out << YAML::BeginMap;
    out << YAML::Key << "format" << YAML::Value << kFormat;
    out << YAML::Key << "step" << YAML::Value << progress.step;
    out << YAML::Key << "data" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "epoch" << YAML::Value
        << progress.data.epoch << YAML::Key << "cursor" << YAML::Value << progress.data.cursor << YAML::EndMap;
    out << YAML::Key << "data_of" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "shards"
        << YAML::Value << progress.data_of.shards << YAML::Key << "tokens" << YAML::Value << progress.data_of.tokens
        << YAML::Key << "crc32c" << YAML::Value << hex(progress.data_of.crc32c, 8) << YAML::EndMap;
    out << YAML::Comment("the shards the position counts in: file names and token counts");
    out << YAML::Key << "tokenizer" << YAML::Value << YAML::Load(identity_yaml(progress.tokenizer));
    out << YAML::Comment("what the ids mean");
    out << YAML::Key << "steps_skipped" << YAML::Value << progress.steps_skipped;
    out << YAML::Key << "seed" << YAML::Value << cfg.run.seed;
    out << YAML::Comment("data order and init derive from the seed; training draws no other random numbers");
    out << YAML::Key << "layout" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "world_size"
        << YAML::Value << world_size << YAML::Key << "expert_parallel" << YAML::Value << expert_parallel
        << YAML::EndMap;
    out << YAML::Key << "files" << YAML::Value << YAML::BeginSeq;
    for (const CheckpointFile& f : files)
        out << YAML::Flow << YAML::BeginMap << YAML::Key << "name" << YAML::Value << f.name << YAML::Key << "bytes"
            << YAML::Value << f.bytes << YAML::Key << "crc32c" << YAML::Value << hex(f.checksum, 8) << YAML::EndMap;
    out << YAML::EndSeq;
    out << YAML::Key << "config" << YAML::Value << YAML::Literal << to_yaml(cfg);
    out << YAML::EndMap;
    const std::string body = std::string(out.c_str()) + "\n";
    return body + kChecksumKey + hex(crc32c(0, body.data(), body.size()), 8) + "\n";
}

// "name bytes checksum" lines: what a rank wrote, sent to rank 0.
std::string encode(const std::vector<CheckpointFile>& files) {
    std::string s;
    for (const CheckpointFile& f : files) s += f.name + " " + std::to_string(f.bytes) + " " + hex(f.checksum, 8) + "\n";
    return s;
}

std::vector<CheckpointFile> decode(const std::string& text) {
    std::vector<CheckpointFile> files;
    size_t start = 0;
    for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
        char name[256];
        unsigned long long bytes = 0, hash = 0;
        if (std::sscanf(text.substr(start, end - start).c_str(), "%255s %llu %llx", name, &bytes, &hash) == 3)
            files.push_back({name, bytes, hash});
    }
    return files;
}

// Keeps the newest `keep` complete checkpoints; removes older ones and any
// incomplete (.tmp) directory but the one being written.
void prune(const std::string& root, int keep) {
    std::vector<std::pair<int, fs::path>> complete;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(root, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) {
            fs::remove_all(entry.path(), ec);
            continue;
        }
        const int step = step_of(name);
        if (step >= 0 && fs::exists(entry.path() / kInfoFile)) complete.push_back({step, entry.path()});
    }
    std::sort(complete.rbegin(), complete.rend());
    for (size_t i = size_t(keep); i < complete.size(); ++i) fs::remove_all(complete[i].second, ec);
}

// Something named like the checkpoint about to be published that is not a
// complete checkpoint (a directory without checkpoint.yaml, a dangling link,
// a file) would make the rename fail on every save: it is moved aside, kept
// for a person to look at. Rank 0 only.
void move_aside_damaged(const std::string& final_dir) {
    std::error_code ec;
    if (!fs::exists(fs::symlink_status(final_dir, ec))) return;
    std::string aside = final_dir + ".damaged";
    for (int i = 2; fs::exists(fs::symlink_status(aside, ec)); ++i) aside = final_dir + ".damaged-" + std::to_string(i);
    if (::rename(final_dir.c_str(), aside.c_str()) != 0)
        throw CheckpointError("'" + final_dir + "' is in the way and is not a complete checkpoint, and it cannot be "
                              "moved aside (" + std::strerror(errno) + "): remove it");
    spdlog::warn("'{}' was not a complete checkpoint (no {}, or a broken link): moved aside to '{}'", final_dir,
                 kInfoFile, aside);
}

// Rank 0, once every part is written: checkpoint.yaml, the rename that
// publishes the checkpoint, then `latest` and the pruning. A failure after the
// rename leaves a complete checkpoint: it is reported as a warning.
void publish(const std::string& root, const std::string& name, const std::string& info_text, int keep) {
    const std::string final_dir = root + "/" + name, tmp_dir = final_dir + ".tmp";
    write_file_atomically(tmp_dir + "/" + kInfoFile, {{info_text.data(), info_text.size()}});
    move_aside_damaged(final_dir);
    if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0)
        throw CheckpointError("cannot rename '" + tmp_dir + "' to '" + final_dir + "' (" + std::strerror(errno) + ")");
    sync_dir(root);
    try {
        write_file_atomically(root + "/" + kLatestFile, {{name.data(), name.size()}, {"\n", 1}});
    } catch (const DataError& e) {
        spdlog::warn("checkpoint {} is saved and complete, but `latest` could not be updated ({}); --resume auto "
                     "finds it all the same",
                     final_dir, e.what());
    }
    prune(root, keep);
}

}  // namespace

std::string CheckpointInfo::model_part(int p) const { return part_name("model", p, expert_parallel); }
std::string CheckpointInfo::optimizer_part(int p) const { return part_name("optimizer", p, expert_parallel); }

std::string checkpoints_dir(const std::string& run_dir) { return run_dir + "/checkpoints"; }

std::string save_checkpoint(const Config& cfg, const TrainProgress& progress, const ParameterSet& params,
                            const ProcessGroups* groups) {
    const std::string root = checkpoints_dir(cfg.run.out_dir);
    const std::string name = step_dir_name(progress.step);
    const std::string final_dir = root + "/" + name, tmp_dir = final_dir + ".tmp";
    const int rank = groups ? groups->world_rank() : 0;
    const int world_size = groups ? groups->world_size() : 1;
    const int parts = groups ? groups->ep_size() : 1, part = groups ? groups->ep_rank() : 0;
    const bool writes_part = !groups || groups->dp_rank() == 0;  // one copy of each part
    Communicator* world = groups ? groups->world.get() : nullptr;

    try {
        bool exists = false;
        on_all_ranks(world, [&] {
            if (rank != 0) return;
            exists = fs::exists(final_dir + "/" + kInfoFile);
            if (exists) return;  // this very state is saved already (a run resumed at its end)
            std::error_code ec;
            fs::remove_all(tmp_dir, ec);  // left by a save that crashed
            fs::create_directories(tmp_dir, ec);
            if (ec) throw CheckpointError("cannot create '" + tmp_dir + "': " + ec.message());
        });
        if (world && world->size() > 1) {
            int32_t flag = exists;
            world->all_reduce(&flag, 1, DType::I32, ReduceOp::Max);
            exists = flag != 0;
        }
        if (exists) {
            if (rank == 0)
                write_file_atomically(root + "/" + kLatestFile, {{name.data(), name.size()}, {"\n", 1}});
            return final_dir;
        }

        // Replicated tensors go to part 0, whose writer is world rank 0.
        const bool replicated = part == 0;
        std::vector<CheckpointFile> mine;
        for (const bool moments : {false, true}) {
            const HostTensors tensors = part_of_rank(params, moments, replicated, writes_part);
            on_all_ranks(world, [&] {
                if (!writes_part) return;
                const std::string name = part_name(moments ? "optimizer" : "model", part, parts);
                const FileDigest d = write_safetensors(tmp_dir + "/" + name, tensors.refs);
                mine.push_back({name, d.bytes, d.crc32c});
            });
        }

        std::vector<CheckpointFile> files;
        if (world && world->size() > 1) {
            for (const std::string& text : all_gather_strings(*world, encode(mine)))
                for (const CheckpointFile& f : decode(text)) files.push_back(f);
        } else {
            files = mine;
        }
        std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
        on_all_ranks(world, [&] {
            if (rank == 0)
                publish(root, name, info_yaml(cfg, progress, world_size, parts, files), cfg.checkpoint.keep);
        });
    } catch (const std::exception& e) {
        if (rank == 0) {
            std::error_code ec;
            fs::remove_all(tmp_dir, ec);
        }
        const std::string previous = latest_checkpoint(cfg.run.out_dir);  // a failed save never moves it
        const std::string kept = previous.empty() ? "there is no earlier checkpoint"
                                                  : "the previous checkpoint '" + previous + "' is intact and `latest` "
                                                    "still names it";
        const std::string message = "checkpoint of step " + std::to_string(progress.step) + " not saved: " +
                                    e.what() + "; " + kept +
                                    " (free disk space or fix permissions, then resume with --resume auto)";
        if (const auto* job = dynamic_cast<const JobError*>(&e)) throw JobError(job->rank(), message);
        throw CheckpointError(message);
    }
    return final_dir;
}

std::string latest_checkpoint(const std::string& run_dir) {
    const std::string root = checkpoints_dir(run_dir);
    std::error_code ec;
    if (!fs::is_directory(root, ec)) return "";
    int best = -1;
    try {  // `latest` first: normally it names the newest
        std::string name = read_small_file(root + "/" + kLatestFile, 256);
        while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
        if (step_of(name) >= 0 && fs::exists(root + "/" + name + "/" + kInfoFile, ec)) best = step_of(name);
    } catch (const DataError&) {
        // missing or not a small file: the directories alone tell
    }
    for (const auto& entry : fs::directory_iterator(root, ec)) {
        const int step = step_of(entry.path().filename().string());
        if (step > best && fs::exists(entry.path() / kInfoFile, ec)) best = step;
    }
    return best >= 0 ? root + "/" + step_dir_name(best) : "";
}

namespace {

// The text of checkpoint.yaml without its checksum line, after checking it
// (format 2; a format 1 file has none and is returned whole).
std::string checked_info_text(const std::string& text, const std::string& where) {
    const size_t at = text.rfind(std::string("\n") + kChecksumKey);
    if (at == std::string::npos) {
        if (text.find(std::string("format: ") + kFormat1) != std::string::npos) return text;
        throw CheckpointError(where + kInfoFile + " has no checksum line: it is damaged (cut short?); use an older "
                              "checkpoint");
    }
    const std::string body = text.substr(0, at + 1);
    const std::string recorded = text.substr(at + 1 + std::string(kChecksumKey).size());
    char computed[16];
    std::snprintf(computed, sizeof computed, "%08x\n", crc32c(0, body.data(), body.size()));
    if (recorded != computed)
        throw CheckpointError(where + kInfoFile + " does not match its checksum: it was edited or damaged; use an "
                              "older checkpoint (a checkpoint is not edited by hand: change settings with --set)");
    return body;
}

void parse_info(const YAML::Node& root, CheckpointInfo& info) {
    const std::string format = root["format"] ? root["format"].as<std::string>() : "";
    info.format = format == kFormat ? 2 : format == kFormat1 ? 1 : 0;
    if (info.format == 0) throw YAML::Exception(YAML::Mark::null_mark(), "format is not '" + std::string(kFormat) + "'");
    info.progress.step = root["step"].as<int>();
    info.progress.data.epoch = root["data"]["epoch"].as<uint64_t>();
    info.progress.data.cursor = root["data"]["cursor"].as<uint64_t>();
    if (info.format == 2) {
        info.progress.data_of.shards = root["data_of"]["shards"].as<int64_t>();
        info.progress.data_of.tokens = root["data_of"]["tokens"].as<int64_t>();
        info.progress.data_of.crc32c = uint32_t(std::stoul(root["data_of"]["crc32c"].as<std::string>(), nullptr, 16));
    }
    info.progress.steps_skipped = root["steps_skipped"].as<int>();
    info.seed = root["seed"].as<uint64_t>();
    info.world_size = root["layout"]["world_size"].as<int>();
    info.expert_parallel = root["layout"]["expert_parallel"].as<int>();
    const char* checksum_key = info.format == 2 ? "crc32c" : "fnv1a";
    for (const YAML::Node& f : root["files"])
        info.files.push_back({f["name"].as<std::string>(), f["bytes"].as<uint64_t>(),
                              std::stoull(f[checksum_key].as<std::string>(), nullptr, 16)});
    info.config = parse_config(root["config"].as<std::string>());
    if (root["tokenizer"]) {
        info.progress.tokenizer = identity_from_yaml(YAML::Dump(root["tokenizer"]));
    } else if (info.config.model.vocab_size != 256) {  // before tokenizers: ids made elsewhere
        info.progress.tokenizer = TokenizerIdentity{"none", "", 0, 0};
    }
}

// The values against each other and the directory's name.
void check_values(const CheckpointInfo& info, const std::string& where) {
    const auto damaged = [&](const std::string& why) {
        throw CheckpointError(where + kInfoFile + " is damaged (" + why + "); use an older checkpoint");
    };
    const int named = step_of(fs::path(info.dir).filename().string());
    if (info.progress.step < 0) damaged("step " + std::to_string(info.progress.step) + " is negative");
    if (named >= 0 && named != info.progress.step)
        damaged("step " + std::to_string(info.progress.step) + " but the directory is step " + std::to_string(named));
    if (info.progress.steps_skipped < 0 || info.progress.steps_skipped > info.progress.step)
        damaged("steps_skipped " + std::to_string(info.progress.steps_skipped) + " outside [0, step]");
    if (info.seed != info.config.run.seed) damaged("seed differs from its config's run.seed");
    if (info.expert_parallel < 1 || info.world_size < info.expert_parallel ||
        info.world_size % info.expert_parallel != 0 || info.config.model.moe.num_experts % info.expert_parallel != 0)
        damaged("layout does not fit the model");
    if (info.format == 2 && (info.progress.data_of.shards < 1 || info.progress.data_of.tokens < 1))
        damaged("the data it counts in is empty");
    for (const CheckpointFile& f : info.files)
        if (f.name.empty() || f.name.find('/') != std::string::npos || f.name[0] == '.')
            damaged("file name '" + f.name + "' is not a name within the directory");
}

}  // namespace

CheckpointInfo read_checkpoint_info(const std::string& dir) {
    const std::string path = dir + "/" + kInfoFile;
    const std::string where = "checkpoint '" + dir + "': ";
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) throw CheckpointError(where + "no such directory");
    if (!fs::exists(path, ec))
        throw CheckpointError(where + "has no " + kInfoFile +
                              ": it is incomplete (a save that did not finish); use an older one or --resume auto");
    CheckpointInfo info;
    info.dir = dir;
    try {
        parse_info(YAML::Load(checked_info_text(read_small_file(path, kInfoMaxBytes), where)), info);
    } catch (const CheckpointError&) {
        throw;
    } catch (const std::exception& e) {
        throw CheckpointError(where + kInfoFile + " is damaged (" + e.what() + "); use an older checkpoint");
    }
    check_values(info, where);
    std::set<std::string> names;
    for (const CheckpointFile& f : info.files) names.insert(f.name);
    for (int p = 0; p < info.expert_parallel; ++p)
        for (const std::string& name : {info.model_part(p), info.optimizer_part(p)})
            if (!names.count(name)) throw CheckpointError(where + kInfoFile + " does not list " + name);
    for (const CheckpointFile& f : info.files) {
        const std::string file = dir + "/" + f.name;
        if (!fs::exists(file, ec))
            throw CheckpointError(where + "file " + f.name + " is missing; the checkpoint cannot be used (use an "
                                                             "older one with --resume DIR)");
        const uint64_t size = fs::file_size(file, ec);
        if (size != f.bytes)
            throw CheckpointError(where + "file " + f.name + " has " + std::to_string(size) + " bytes instead of " +
                                  std::to_string(f.bytes) + " (truncated or overwritten); use an older checkpoint");
    }
    return info;
}

void verify_checkpoint_file(const CheckpointInfo& info, const std::string& name) {
    for (const CheckpointFile& f : info.files) {
        if (f.name != name) continue;
        const std::string path = info.dir + "/" + name;
        const FileDigest d = info.format == 2 ? digest_file(path) : FileDigest{};
        const bool same = info.format == 2 ? d.bytes == f.bytes && d.crc32c == f.checksum
                                           : fnv1a_of_file(path) == f.checksum;
        if (!same)
            throw CheckpointError("checkpoint '" + info.dir + "': file " + name +
                                  " is corrupted (its checksum differs from the one recorded at save time); use an "
                                  "older checkpoint with --resume DIR");
        return;
    }
    throw CheckpointError("checkpoint '" + info.dir + "': " + kInfoFile + " does not list " + name);
}

namespace {

// Every scalar under `path` that differs between a and b, as "key is A in the
// checkpoint but B in the config".
void differences(const YAML::Node& a, const YAML::Node& b, const std::string& path, std::vector<std::string>& out) {
    if (a.IsMap() || b.IsMap()) {
        std::set<std::string> keys;
        for (const auto& kv : a) keys.insert(kv.first.as<std::string>());
        for (const auto& kv : b) keys.insert(kv.first.as<std::string>());
        for (const std::string& k : keys) differences(a[k], b[k], path.empty() ? k : path + "." + k, out);
        return;
    }
    const auto text = [](const YAML::Node& n) { return !n ? "(absent)" : n.IsNull() ? "null" : YAML::Dump(n); };
    const std::string va = text(a), vb = text(b);
    if (va != vb) out.push_back(path + " is " + va + " in the checkpoint but " + vb + " in the config");
}

std::string describe(const DataIdentity& d) {
    return std::to_string(d.shards) + " shard(s) of " + std::to_string(d.tokens) + " tokens";
}

}  // namespace

std::vector<std::string> config_differences(const Config& checkpoint, const Config& current) {
    std::vector<std::string> out;
    differences(YAML::Load(to_yaml(checkpoint)), YAML::Load(to_yaml(current)), "", out);
    return out;
}

namespace {
// Whether a difference changes the model. The expert bias's rate does not
// while both configs keep a bias: it may change on resume (0 freezes it).
bool changes_model(const std::string& d, const Config& checkpoint, const Config& current) {
    if (d.rfind("model.moe.expert_bias_rate ", 0) == 0)
        return !checkpoint.model.moe.expert_bias_rate || !current.model.moe.expert_bias_rate;
    // 0 means expert_hidden_size: spelling that size out is the same model.
    if (d.rfind("model.moe.shared_expert_hidden_size ", 0) == 0)
        return checkpoint.model.moe.shared_hidden() != current.model.moe.shared_hidden();
    return d.rfind("model.", 0) == 0;
}
}  // namespace

std::string model_difference(const Config& checkpoint, const Config& current) {
    for (const std::string& d : config_differences(checkpoint, current))
        if (changes_model(d, checkpoint, current)) return d;
    return "";
}

std::vector<std::string> check_resumable(const CheckpointInfo& info, const Config& current, const DataIdentity& data) {
    const std::string where = "checkpoint '" + info.dir + "' ";
    const std::string model = model_difference(info.config, current);
    if (!model.empty())
        throw CheckpointError(where + "is of another model: " + model +
                              "; resume with the checkpoint's model config (its checkpoint.yaml holds it)");
    // The data order derives from run.seed over the sequences of train.seq_len
    // tokens of these shards: a change would skip or repeat sequences.
    const std::string new_run = "; resume with the checkpoint's setting, or start a new run from its weights "
                                "(moe-checkpoint export, then --init-from)";
    std::vector<std::string> changes;
    for (const std::string& d : config_differences(info.config, current)) {
        if (changes_model(d, info.config, current)) continue;
        if (d.rfind("run.seed ", 0) == 0 || d.rfind("train.seq_len ", 0) == 0)
            throw CheckpointError(where + "continues another data order: " + d + new_run);
        if (d.rfind("data.train ", 0) == 0 && info.format == 1)
            throw CheckpointError(where + "(format 1, without a record of its shards) continues another data set: " +
                                  d + new_run);
        changes.push_back(d);
    }
    if (info.format == 2 && info.progress.data_of != data)
        throw CheckpointError(where + "counts its data position in other shards: " + describe(info.progress.data_of) +
                              " then, " + describe(data) + " in data.train '" + current.data.train + "' now" +
                              new_run);
    for (std::string& c : changes) {
        const bool order_kept = c.rfind("train.micro_batch_size ", 0) == 0 ||
                                c.rfind("train.grad_accum_steps ", 0) == 0 || c.rfind("data.train ", 0) == 0;
        if (order_kept) c += " (the data order is kept: the position counts sequences of the same shards)";
    }
    return changes;
}

namespace {

// The weights, and the moments when asked for, of this rank's parameters.
void load_parts(const CheckpointInfo& info, const Config& cfg, ParameterSet& params, bool moments) {
    const std::string diff = model_difference(info.config, cfg);
    if (!diff.empty())
        throw CheckpointError("checkpoint '" + info.dir + "' is of another model: " + diff +
                              "; resume with the checkpoint's model config (its checkpoint.yaml holds it)");

    // The parts this rank reads: part 0 (replicated tensors) and those of its experts.
    const int per_part = cfg.model.moe.num_experts / info.expert_parallel;
    std::set<int> needed = {0};
    for (const Param& p : params.all())
        if (p.is_expert_stack())
            for (int64_t i = 0; i < p.shape[0]; ++i) needed.insert((p.expert_offset + int(i)) / per_part);
    std::map<int, SafetensorsFile> model, optim;
    for (int part : needed) {
        verify_checkpoint_file(info, info.model_part(part));
        model.emplace(part, SafetensorsFile(info.dir + "/" + info.model_part(part)));
        if (!moments) continue;
        verify_checkpoint_file(info, info.optimizer_part(part));
        optim.emplace(part, SafetensorsFile(info.dir + "/" + info.optimizer_part(part)));
    }
    const auto part_of = [&](const std::string& name) {
        const size_t at = name.find(".experts.");
        if (at == std::string::npos) return 0;
        return std::stoi(name.substr(at + 9)) / per_part;
    };

    const auto in = [&](std::map<int, SafetensorsFile>& files) {
        return [&](const std::string& name) -> const SafetensorsFile& { return files.at(part_of(name)); };
    };
    load_slot(params, ParameterSet::Slot::Value, "", in(model));
    if (!moments) return;
    load_slot(params, ParameterSet::Slot::M, "exp_avg.", in(optim));
    load_slot(params, ParameterSet::Slot::V, "exp_avg_sq.", in(optim));
}

}  // namespace

void load_checkpoint(const CheckpointInfo& info, const Config& cfg, ParameterSet& params) {
    load_parts(info, cfg, params, true);
}

void load_checkpoint_weights(const CheckpointInfo& info, const Config& cfg, ParameterSet& params) {
    load_parts(info, cfg, params, false);
}

}  // namespace moe
