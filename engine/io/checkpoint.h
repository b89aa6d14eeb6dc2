// Checkpoints: one directory per step under run.out_dir/checkpoints,
//   step-00000200/model-00000-of-00002.safetensors      weights (MODEL.md names)
//                 optimizer-00000-of-00002.safetensors  AdamW moments (exp_avg.NAME, exp_avg_sq.NAME)
//                 ... one part per EP rank of the saving layout: part p holds
//                 the experts of EP rank p under their global index, part 0
//                 also every replicated tensor;
//                 checkpoint.yaml                       step, data position and the data it counts in,
//                                                       tokenizer, seed, layout, config, size and CRC-32C of
//                                                       every file, and a CRC-32C of itself
//   latest                                              the name of the newest complete one
// A save goes to step-N.tmp: every rank that holds a part writes it (no rank
// gathers the model), rank 0 then writes checkpoint.yaml, renames the
// directory and points `latest` at it, each step synced; older checkpoints
// are removed only after that. A crash at any point leaves the previous one
// complete. Loading takes any layout: each rank reads the tensors it holds.
// Checkpoints of format 1 (FNV-1a checksums, no self-checksum, no data
// identity) are still read.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/process_groups.h"
#include "engine/config/config.h"
#include "engine/io/data_loader.h"
#include "engine/io/tokenizer.h"
#include "engine/params/parameters.h"

namespace moe {

// A checkpoint that cannot be written or used: one line naming it and the fix.
struct CheckpointError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Everything a resumed run needs besides the tensors. Training draws no random
// numbers: the data order derives from (run.seed, epoch), the init from run.seed.
struct TrainProgress {
    int step = 0;           // steps done
    DataPosition data;      // of the training data: global, the same on every rank
    DataIdentity data_of;   // the shards `data` counts in (all zero: unknown, format 1)
    int steps_skipped = 0;  // non-finite steps skipped so far
    // What the ids mean (a checkpoint from before tokenizers has none: its run
    // was byte-level text for vocab 256, ids made elsewhere otherwise).
    TokenizerIdentity tokenizer;
};

struct CheckpointFile {
    std::string name;  // within the checkpoint directory
    uint64_t bytes = 0;
    uint64_t checksum = 0;  // CRC-32C (format 2) or FNV-1a (format 1)
};

// checkpoint.yaml, read and checked: every file it lists exists with its size.
struct CheckpointInfo {
    std::string dir;
    int format = 2;  // 1: FNV-1a file checksums, no self-checksum or data identity
    TrainProgress progress;
    uint64_t seed = 0;
    int world_size = 1, expert_parallel = 1;  // the saving layout: expert_parallel parts
    Config config;                            // the run's config when saved
    std::vector<CheckpointFile> files;

    std::string model_part(int p) const;      // "model-0000p-of-0000P.safetensors"
    std::string optimizer_part(int p) const;  // "optimizer-0000p-of-0000P.safetensors"
};

std::string checkpoints_dir(const std::string& run_dir);

// Saves the state after progress.step steps. Collective over the world (groups
// may be null: one process). Returns the checkpoint's directory. A failure on
// any rank throws on every rank, after removing the incomplete directory.
std::string save_checkpoint(const Config& cfg, const TrainProgress& progress, const ParameterSet& params,
                            const ProcessGroups* groups);

// The newest complete checkpoint of a run directory ("" if there is none):
// the newest step-N directory that has its checkpoint.yaml, or the one
// `latest` names if that is newer still. (`latest` may lag: a save whose
// `latest` could not be written is complete all the same.)
std::string latest_checkpoint(const std::string& run_dir);

// checkpoint.yaml read and checked: its own checksum, values in range and
// consistent with the directory's name, every file it lists present with its
// size. CheckpointError names the problem.
CheckpointInfo read_checkpoint_info(const std::string& dir);

// Checks a file of the checkpoint against its recorded size and checksum.
void verify_checkpoint_file(const CheckpointInfo& info, const std::string& name);

// Whether a run of config `current` on data `data` continues the checkpoint's
// run: the same model, and the same data order (run.seed, train.seq_len and
// the shards the position counts in). CheckpointError names the first
// difference that would skip or repeat sequences. Returns what else changed,
// as lines to log (a changed batch split keeps the order: the position counts
// sequences).
std::vector<std::string> check_resumable(const CheckpointInfo& info, const Config& current, const DataIdentity& data);

// Every key whose value differs, as "train.steps is 1200 in the checkpoint but
// 2000 in the config".
std::vector<std::string> config_differences(const Config& checkpoint, const Config& current);
// Empty if the two configs describe the same model; otherwise the first
// difference in the model section.
std::string model_difference(const Config& checkpoint, const Config& current);

// Loads this rank's tensors (values and moments, whatever layout saved them)
// after checking the model matches cfg and the checksums of the files it
// reads.
void load_checkpoint(const CheckpointInfo& info, const Config& cfg, ParameterSet& params);
// The same for the weights alone (inference: parameters without moments);
// the optimizer's files are neither read nor checked.
void load_checkpoint_weights(const CheckpointInfo& info, const Config& cfg, ParameterSet& params);

}  // namespace moe
