// The training loop: micro-batches with gradient accumulation, AdamW with
// clipping and the schedule, evaluation, progress lines and JSON metrics.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/process_groups.h"
#include "engine/config/config.h"
#include "engine/model/model.h"
#include "kernels/ops.h"

namespace moe {

struct TrainingError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct TrainSummary {
    int first_step = 0;     // steps done before this call (resumed from a checkpoint)
    int steps_done = 0;     // steps done when it returns, skipped ones included
    bool stopped = false;   // by a signal, before train.steps
    std::string checkpoint; // the last one saved
    int steps_skipped = 0;  // non-finite losses skipped (nan_policy: skip)
    double last_train_loss = 0;
    double val_loss = 0;    // NaN when there is no validation data
    double val_bpb = 0;     // val_loss as bits per byte of text; NaN when unknown (engine/train/run_tokenizer.h)
    std::string tokenizer;  // the run's, described
    double tokens_per_s = 0;
    double all_to_all_share = 0;  // of the step time, mean over ranks (expert parallel only)
    std::vector<double> losses;  // training loss of every step taken by this call
};

struct TrainOptions {
    std::string init_from;  // safetensors weights to start a new run from (empty: seeded init)
    std::string resume;     // "auto": the newest checkpoint in run.out_dir, if any; a checkpoint directory; or empty
};

// How this rank's model is set up for a run of cfg: its expert-parallel
// group, the optimizer state's split (parallel.shard_optimizer), the
// recomputation (train.recompute). groups null: one process.
ModelOptions model_options(const Config& cfg, const ProcessGroups* groups);

// groups: the process groups of a multi-process run (null: one process).
// Every rank calls train(); rank 0 logs and writes the run directory.
TrainSummary train(const Config& cfg, Ops& ops, const TrainOptions& opts = {}, const ProcessGroups* groups = nullptr);

}  // namespace moe
