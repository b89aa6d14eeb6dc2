#include "engine/train/trainer.h"

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>

#include "comm/agreement.h"
#include "engine/io/checkpoint.h"
#include "engine/io/crc32c.h"
#include "engine/io/data_loader.h"
#include "engine/io/files.h"
#include "engine/io/metrics.h"
#include "engine/io/weights_io.h"
#include "engine/model/flops.h"
#include "engine/model/model.h"
#include "engine/run/layout_report.h"
#include "engine/run/stop_signal.h"
#include "engine/run/trace_range.h"
#include "engine/train/expert_telemetry.h"
#include "engine/train/grad_sync.h"
#include "engine/train/lr_schedule.h"
#include "engine/train/optimizer.h"
#include "engine/train/run_tokenizer.h"
#include "engine/train/step_totals.h"

namespace moe {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string format_duration(double s) {
    const long t = long(s + 0.5);
    char buf[32];
    if (t >= 3600)
        std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
    return buf;
}

// CRC-32C of the weights the compute reads (the working copy: whole on every
// rank, also where the optimizer state is split) of every parameter that is
// not an expert's.
uint32_t replicated_weights_crc32c(const ParameterSet& params) {
    uint32_t crc = 0;
    std::vector<char> host;
    for (const Param& p : params.all()) {
        if (p.is_expert_stack()) continue;
        host.resize(p.work.bytes());
        params.ops().copy_to_host(host.data(), p.work);
        crc = crc32c(crc, host.data(), host.size());
    }
    return crc;
}

// One run of train(): set up by the constructor (run directory, data, model,
// restored state), then run() takes the steps. Every rank builds one; rank 0
// (lead) logs and writes the run directory.
class Trainer {
public:
    Trainer(const Config& cfg, Ops& ops, const TrainOptions& opts, const ProcessGroups* groups);
    TrainSummary run();

private:
    // Setup, in order.
    void open_run(const TrainOptions& opts);
    void build_model();
    void restore(const TrainOptions& opts);
    void report_setup();
    // The loop.
    StepTotals forward_backward(GradientReducer& reducer);
    void balance_over_step(ForwardResult& r, std::vector<double>& so_far) const;
    bool apply(int step, const StepTotals& t, double grad_norm, double lr);
    void record(int step, const StepTotals& t, double grad_norm, double lr, double step_s, double a2a_s);
    void validate(int done);
    void save(int done);
    void report_end(Clock::time_point start);

    const Config& cfg_;
    const ModelConfig& mc_;
    Ops& ops_;
    const ProcessGroups* groups_;
    Communicator* world_;  // null: one process
    Communicator* ep_;     // the EP group when it has several ranks, else null
    const int B_, T_, A_, steps_, rank_, world_size_;
    const bool lead_;
    const int64_t tokens_per_step_;
    const std::string metrics_path_;

    std::unique_ptr<DataLoader> train_data_, val_data_;
    RunTokenizer tokenizer_;
    std::string resume_from_;  // a checkpoint directory, or empty: a fresh start
    std::unique_ptr<Model> model_;
    std::unique_ptr<AdamW> optimizer_;
    std::unique_ptr<MetricsWriter> metrics_;
    std::optional<ExpertTelemetry> telemetry_;  // made once the model is sized: it is [layers][experts]
    TrainProgress progress_;
    std::vector<int32_t> inputs_, targets_;
    TrainSummary summary_;
    double timed_s_ = 0;  // time in the steps taken, without evaluation and checkpoints
    int timed_steps_ = 0;
    int consecutive_skips_ = 0;
    double a2a_s_ = 0, a2a_bytes_ = 0;  // in the timed steps, this rank
};

Trainer::Trainer(const Config& cfg, Ops& ops, const TrainOptions& opts, const ProcessGroups* groups)
    : cfg_(cfg),
      mc_(cfg.model),
      ops_(ops),
      groups_(groups),
      world_(groups ? groups->world.get() : nullptr),
      ep_(groups && groups->ep_size() > 1 ? groups->ep.get() : nullptr),
      B_(cfg.train.micro_batch_size),
      T_(cfg.train.seq_len),
      A_(cfg.train.grad_accum_steps),
      steps_(cfg.train.steps),
      rank_(groups ? groups->world_rank() : 0),
      world_size_(world_size(groups)),
      lead_(rank_ == 0),
      tokens_per_step_(int64_t(B_) * T_ * A_ * world_size_),
      metrics_path_(cfg.run.out_dir + "/metrics.jsonl") {
    open_run(opts);
    build_model();
    restore(opts);
    report_setup();
}

// Which checkpoint to resume from, the run directory, the data. Bad input
// that one rank finds (an unwritable run directory, a shard one node lacks)
// stops every rank with its message.
void Trainer::open_run(const TrainOptions& opts) {
    namespace fs = std::filesystem;
    on_all_ranks(world_, [&] {
        const std::string latest = latest_checkpoint(cfg_.run.out_dir);
        if (opts.resume == "auto") {
            resume_from_ = latest;
        } else if (!opts.resume.empty()) {
            resume_from_ = opts.resume;
        } else if (!latest.empty()) {  // a fresh start would overwrite that run's checkpoints
            throw TrainingError("run.out_dir '" + cfg_.run.out_dir + "' already holds checkpoints (newest: " + latest +
                                "): continue that run with --resume auto, or set another run.out_dir");
        }
        if (lead_) {
            std::error_code ec;
            fs::create_directories(cfg_.run.out_dir, ec);
            if (ec) throw TrainingError("cannot create run.out_dir '" + cfg_.run.out_dir + "': " + ec.message());
            const std::string text = to_yaml(cfg_);
            try {
                write_file_atomically(cfg_.run.out_dir + "/config.yaml", {{text.data(), text.size()}});
            } catch (const DataError& e) {
                throw TrainingError("cannot write into run.out_dir '" + cfg_.run.out_dir + "': " + e.what());
            }
        }
        train_data_ = std::make_unique<DataLoader>(cfg_.data.train, mc_.vocab_size, T_, B_, cfg_.run.seed,
                                                   /*shuffle=*/true, rank_, world_size_);
        if (!cfg_.data.val.empty()) {
            val_data_ = std::make_unique<DataLoader>(cfg_.data.val, mc_.vocab_size, T_, B_, cfg_.run.seed,
                                                     /*shuffle=*/false, rank_, world_size_);
            // An evaluation reads the validation data once at most: more batches would repeat it.
            const int64_t per_batch = int64_t(B_) * A_ * world_size_;
            const int64_t needed = int64_t(cfg_.eval.batches) * per_batch, have = val_data_->num_sequences();
            if (needed > have)
                throw ConfigError("config: eval.batches x train.micro_batch_size x train.grad_accum_steps x ranks "
                                  "is " + std::to_string(needed) + " sequences, more than the " +
                                  std::to_string(have) + " of data.val: set eval.batches to at most " +
                                  std::to_string(have / per_batch) + " (one pass over it), or add validation data");
        }
        tokenizer_ = check_run_tokenizer(cfg_);
    });
    if (world_ && world_->size() > 1) {
        check_same_on_all_ranks(*world_, "checkpoint to resume", resume_from_);
        const DataIdentity d = train_data_->identity();
        check_same_on_all_ranks(*world_, "training data (data.train's shards by name and size)",
                                std::to_string(d.shards) + " " + std::to_string(d.tokens) + " " + std::to_string(d.crc32c));
        check_same_on_all_ranks(*world_, "tokenizer (data.tokenizer's model file)", identity_yaml(tokenizer_.identity));
    }
}

void Trainer::build_model() {
    // A GPU too small for the config may fail on some ranks only.
    on_all_ranks(world_, [&] {
        model_ = std::make_unique<Model>(mc_, ops_, ops_.training_precision(), B_, T_, model_options(cfg_, groups_));
    });
    model_->params().initialize(cfg_.run.seed);
    inputs_.resize(size_t(B_) * T_);  // sized with the model: a batch too large was refused above
    targets_.resize(size_t(B_) * T_);
    telemetry_.emplace(mc_.num_layers, mc_.moe.num_experts, cfg_.log.starved_share, cfg_.log.starved_intervals);
}

// The weights of --init-from or the state of the checkpoint, and the metrics
// file cut back to the step resumed from.
void Trainer::restore(const TrainOptions& opts) {
    ParameterSet& params = model_->params();
    std::vector<std::string> changes;  // settings that differ from the checkpoint's
    on_all_ranks(world_, [&] {
        if (!opts.init_from.empty()) {
            if (const auto trained = weights_tokenizer(opts.init_from))
                require_same_tokenizer(*trained, tokenizer_.identity, "'" + opts.init_from + "'");
            const std::set<std::string> fresh =
                load_weights(opts.init_from, params, params.experts_elsewhere(mc_.moe.num_experts));
            if (lead_ && !fresh.empty())
                spdlog::info("'{}' has no {} (nor {} more state(s)): they start as in a new model (an expert "
                             "bias at zero)",
                             opts.init_from, *fresh.begin(), fresh.size() - 1);
        }
        if (!resume_from_.empty()) {
            const CheckpointInfo info = read_checkpoint_info(resume_from_);
            require_same_tokenizer(info.progress.tokenizer, tokenizer_.identity, "checkpoint '" + resume_from_ + "'");
            changes = check_resumable(info, cfg_, train_data_->identity());
            load_checkpoint(info, cfg_, params);
            progress_ = info.progress;
            train_data_->set_position(progress_.data);
        }
        params.refresh_work();
        if (lead_) {
            const int cut = truncate_metrics(metrics_path_, progress_.step);  // a fresh start: empty
            if (cut > 0)
                spdlog::warn("{}: {} line(s) cut off by an earlier crash or a full disk dropped", metrics_path_, cut);
            metrics_ = std::make_unique<MetricsWriter>(metrics_path_);
        }
    });
    // Every rank must start from the same replicated weights: an --init-from
    // or a checkpoint that differs between nodes would train several models.
    if (world_ && world_->size() > 1)
        check_same_on_all_ranks(*world_, "replicated weights (of --init-from, the checkpoint or the initialization)",
                                std::to_string(replicated_weights_crc32c(params)));
    if (lead_ && !resume_from_.empty()) {
        spdlog::info("resumed from {} at step {} (data epoch {}, sequence {})", resume_from_, progress_.step,
                     progress_.data.epoch, progress_.data.cursor);
        for (const std::string& d : changes) spdlog::info("resumed with a changed setting: {}", d);
    } else if (lead_ && opts.resume == "auto") {
        spdlog::info("no checkpoint in {}: starting from scratch", checkpoints_dir(cfg_.run.out_dir));
    }
    optimizer_ = std::make_unique<AdamW>(cfg_.optimizer, params);
}

void Trainer::report_setup() {
    if (groups_) {
        const std::vector<RankPlace> places = gather_places(*groups_->world, ops_.device_name());
        if (lead_)
            spdlog::info("{}", layout_report(places, groups_->ep_size(), mc_.moe.num_experts / groups_->ep_size()));
        const std::string problem = shared_gpu_problem(places);
        if (!problem.empty() && !cfg_.parallel.allow_shared_gpu) throw JobError(0, problem);  // every rank sees it
    }
    if (!lead_) return;
    double total_params = 0;  // of the whole model, whatever this rank holds
    for (const Param& p : model_->params().all())
        total_params += double(p.numel()) * (p.is_expert_stack() && groups_ ? groups_->ep_size() : 1);
    const std::string shared = mc_.moe.shared_experts == 0 ? ""
                               : fmt::format(" + {} shared of inner size {}", mc_.moe.shared_experts,
                                             mc_.moe.shared_hidden());
    spdlog::info("model: {:.2f}M parameters, {} layers, {} experts (top-{}, {} router){}, dynamics {}",
                 total_params / 1e6, mc_.num_layers, mc_.moe.num_experts, mc_.moe.top_k, name_of(mc_.moe.router),
                 shared, mc_.dynamics.enabled ? (mc_.dynamics.shared ? "shared" : "per layer") : "off");
    spdlog::info("data: {} train tokens; {} tokens per step ({} x {} x {} accumulation x {} ranks); "
                 "activations {:.1f} MiB per rank",
                 train_data_->total_tokens(), tokens_per_step_, B_, T_, A_, world_size_,
                 model_->activation_bytes() / 1048576.0);
    const double bpt = tokenizer_.val_bytes_per_token;
    spdlog::info("tokenizer: {}; {}", tokenizer_.identity.describe(),
                 bpt > 0 ? fmt::format("{:.4f} bytes of validation text per token", bpt)
                         : "no bits per byte: " + tokenizer_.no_bits_per_byte);
}

TrainSummary Trainer::run() {
    summary_.val_loss = summary_.val_bpb = std::nan("");
    summary_.tokenizer = tokenizer_.identity.describe();
    summary_.first_step = summary_.steps_done = progress_.step;
    summary_.steps_skipped = progress_.steps_skipped;
    if (progress_.step >= steps_) {
        if (lead_)
            spdlog::info("the checkpoint is at step {} and train.steps is {}: nothing left to train (raise "
                         "train.steps to train further)",
                         progress_.step, steps_);
        if (val_data_) validate(progress_.step);
    }
    const auto start = Clock::now();
    for (int step = progress_.step; step < steps_; ++step) {
        std::optional<TraceRange> range(std::in_place, indexed("step", step + 1));  // its training only
        const auto t0 = Clock::now();
        const double a2a_s0 = ep_ ? ep_->seconds_in_all_to_all() : 0;
        const double a2a_bytes0 = ep_ ? double(ep_->bytes_sent_all_to_all()) : 0;
        GradientReducer reducer(model_->params(), groups_);
        StepTotals totals = forward_backward(reducer);
        totals.stop = stop_requested();
        totals.reduce(groups_);
        const double grad_norm = [&] {
            const TraceRange sync("grad sync");
            reducer.finish();
            return global_grad_norm(model_->params(), groups_);
        }();
        const double lr = learning_rate(cfg_.optimizer, step, steps_);
        summary_.steps_done = step + 1;
        if (apply(step, totals, grad_norm, lr)) {
            const double step_s = seconds_since(t0);
            const double step_a2a_s = ep_ ? ep_->seconds_in_all_to_all() - a2a_s0 : 0;
            if (ep_) a2a_bytes_ += double(ep_->bytes_sent_all_to_all()) - a2a_bytes0;
            record(step, totals, grad_norm, lr, step_s, step_a2a_s);
        }
        range.reset();
        const bool last = step + 1 == steps_;
        if (val_data_ && ((cfg_.eval.every > 0 && (step + 1) % cfg_.eval.every == 0) || last)) validate(step + 1);
        if (last || totals.stop || (cfg_.checkpoint.every > 0 && (step + 1) % cfg_.checkpoint.every == 0))
            save(step + 1);
        if (totals.stop && !last) {
            summary_.stopped = true;
            if (lead_)
                spdlog::warn("stopped by a signal after step {} of {}: continue with --resume auto", step + 1, steps_);
            break;
        }
    }
    report_end(start);
    return summary_;
}

// The step's micro-batches. Always backward, even after a NaN: every rank
// must make the same collective calls; the step is judged once all ranks
// agree. The first micro-batch writes the gradients, so none are zeroed
// first; the last hands each bucket to the reducer as it is final.
StepTotals Trainer::forward_backward(GradientReducer& reducer) {
    StepTotals totals;
    const bool global_balance = cfg_.model.moe.balance_scope == BalanceScope::global_batch;
    std::vector<double> so_far;  // [L * E] slots of the step's micro-batches so far, all ranks
    for (int a = 0; a < A_; ++a) {
        std::optional<TraceRange> range;  // a level of its own where there are several
        if (A_ > 1) range.emplace(indexed("micro-batch", a));
        train_data_->next_batch(inputs_.data(), targets_.data());
        ForwardResult r = model_->forward(inputs_.data(), targets_.data(), 1.0 / A_);
        if (global_balance) balance_over_step(r, so_far);
        totals.add(r, A_);
        model_->backward(a == 0 ? Write::overwrite : Write::add, a == A_ - 1 ? reducer.bucket_ready() : nullptr);
    }
    return totals;
}

// balance_scope global_batch: the balancing loss counts the slots of every
// micro-batch of the step so far on every rank (one all-reduce of L x E
// counts a micro-batch; docs/MODEL-OPTIONS.md).
void Trainer::balance_over_step(ForwardResult& r, std::vector<double>& so_far) const {
    std::vector<double> mine;
    for (const MoeStats& layer : r.layers) mine.insert(mine.end(), layer.routed.begin(), layer.routed.end());
    sum_over_world(mine, groups_);
    if (so_far.empty()) so_far.assign(mine.size(), 0.0);
    std::vector<std::vector<int64_t>> slots(r.layers.size());
    size_t i = 0;
    for (std::vector<int64_t>& layer : slots)
        for (size_t e = 0; e < r.layers.front().routed.size(); ++e, ++i) {
            so_far[i] += mine[i];  // integers: exact in double
            layer.push_back(int64_t(so_far[i]));
        }
    model_->balance_over(slots, r);
}

// The optimizer step, unless the loss or gradient is not finite: then
// run.nan_policy stops the run or skips the step. Whether it stepped.
bool Trainer::apply(int step, const StepTotals& t, double grad_norm, double lr) {
    if (std::isfinite(t.loss) && std::isfinite(t.aux) && std::isfinite(grad_norm)) {
        consecutive_skips_ = 0;
        const TraceRange range("optimizer");
        optimizer_->step(step + 1, lr, optimizer_->clip_scale(grad_norm));
        model_->after_step(t.routed);
        return true;
    }
    const std::string what = "step " + std::to_string(step + 1) + ": loss " + std::to_string(t.loss) + ", aux " +
                             std::to_string(t.aux) + ", grad norm " + std::to_string(grad_norm);
    if (cfg_.run.nan_policy == "stop")
        throw TrainingError(what + " is not finite: the run stops (lower optimizer.lr, or set "
                                   "run.nan_policy=skip to skip such steps)");
    ++summary_.steps_skipped;
    if (++consecutive_skips_ >= 10)
        throw TrainingError(what + ": 10 non-finite steps in a row, the run stops (lower optimizer.lr)");
    if (lead_) spdlog::warn("{} is not finite: step skipped (run.nan_policy=skip)", what);
    return false;
}

// A taken step's metrics line and, every log.every steps, its progress line.
void Trainer::record(int step, const StepTotals& t, double grad_norm, double lr, double step_s, double a2a_s) {
    timed_s_ += step_s;
    ++timed_steps_;
    a2a_s_ += a2a_s;
    summary_.last_train_loss = t.loss;
    summary_.losses.push_back(t.loss);
    if (!lead_) return;
    const double imbalance = t.load_imbalance();
    metrics_->write({{"step", step + 1},
                     {"loss", t.loss},
                     {"aux", t.aux},
                     {"balance_loss", t.total_balance_loss()},
                     {"z_loss", t.total_z_loss()},
                     {"lr", lr},
                     {"grad_norm", grad_norm},
                     {"tokens_per_s", tokens_per_step_ / step_s},
                     {"load_max_over_mean", imbalance},
                     {"dropped", double(t.total_dropped())},
                     {"step_s", step_s},
                     {"all_to_all_s", a2a_s}});
    telemetry_->add(t);
    if ((step + 1) % cfg_.log.every != 0 && step != progress_.step && step + 1 != steps_) return;
    std::vector<std::string> starving;
    metrics_->write(telemetry_->take(step + 1, starving));
    for (const std::string& line : starving) spdlog::warn("{}", line);
    const double avg_tok_s = tokens_per_step_ * timed_steps_ / timed_s_;
    const double eta = (steps_ - step - 1) * timed_s_ / timed_steps_;
    // On GPUs, model TFLOP/s and MFU; on CPUs, GFLOP/s.
    const double flops = avg_tok_s * train_flops_per_token(mc_, T_);
    const std::string speed = ops_.device() == Device::CUDA
                                  ? fmt::format("{:.1f} TFLOP/s | MFU {:.1f}%", flops / 1e12,
                                                100 * model_flops_utilization(mc_, T_, avg_tok_s, world_size_))
                                  : fmt::format("{:.2f} GFLOP/s", flops / 1e9);
    spdlog::info("step {:>5}/{} | loss {:.4f} | aux {:.4f} | lr {:.2e} | grad {:.3f} | {:.0f} tok/s | "
                 "{} | load max/mean {:.2f}{} | eta {}",
                 step + 1, steps_, t.loss, t.aux, lr, grad_norm, avg_tok_s, speed, imbalance,
                 t.total_dropped() ? " | dropped " + std::to_string(t.total_dropped()) : std::string(),
                 format_duration(eta));
}

// Mean cross-entropy over the first eval.batches global batches of the
// validation data (each rank its share), so over the same sequences whatever
// the layout.
void Trainer::validate(int done) {
    const TraceRange range("validation");
    const int batches = cfg_.eval.batches * A_;
    val_data_->set_position(DataPosition{});
    std::vector<double> sum = {0};
    for (int i = 0; i < batches; ++i) {
        val_data_->next_batch(inputs_.data(), targets_.data());
        sum[0] += model_->forward(inputs_.data(), targets_.data()).loss;
    }
    sum_over_world(sum, groups_);
    summary_.val_loss = sum[0] / batches / world_size_;
    const double bpt = tokenizer_.val_bytes_per_token;
    summary_.val_bpb = bpt > 0 ? bits_per_byte(summary_.val_loss, bpt) : std::nan("");
    if (!lead_) return;
    MetricsLine line = {{"step", done}, {"val_loss", summary_.val_loss}};
    if (bpt > 0) line.push_back({"val_bpb", summary_.val_bpb});
    metrics_->write(line);
    spdlog::info("step {:>5}/{} | validation loss {:.4f}{}", done, steps_, summary_.val_loss,
                 bpt > 0 ? fmt::format(" | {:.4f} bits per byte", summary_.val_bpb) : std::string());
}

// Saves the state after `done` steps; every rank takes part.
void Trainer::save(int done) {
    const TraceRange range("checkpoint");
    progress_.step = done;
    progress_.data = train_data_->position();
    progress_.data_of = train_data_->identity();
    progress_.steps_skipped = summary_.steps_skipped;
    progress_.tokenizer = tokenizer_.identity;
    const auto t0 = Clock::now();
    summary_.checkpoint = save_checkpoint(cfg_, progress_, model_->params(), groups_);
    if (lead_)
        spdlog::info("step {:>5}/{} | checkpoint {} ({:.2f} s)", done, steps_, summary_.checkpoint, seconds_since(t0));
}

void Trainer::report_end(Clock::time_point start) {
    summary_.tokens_per_s = timed_s_ > 0 ? tokens_per_step_ * timed_steps_ / timed_s_ : 0;
    if (lead_ && timed_steps_ > 0)
        spdlog::info("done: {} steps in {}, {:.0f} tokens/s, {:.1f} ms per step", timed_steps_,
                     format_duration(seconds_since(start)), summary_.tokens_per_s, 1e3 * timed_s_ / timed_steps_);
    if (!ep_) return;
    std::vector<double> comm = {a2a_s_, timed_s_, a2a_bytes_};  // means over the ranks
    sum_over_world(comm, groups_);
    summary_.all_to_all_share = comm[1] > 0 ? comm[0] / comm[1] : 0;
    if (lead_ && timed_steps_ > 0)
        spdlog::info("all-to-all: {:.1f}% of step time, {:.1f} KiB sent per rank per step (mean over ranks)",
                     100 * summary_.all_to_all_share, comm[2] / world_size_ / timed_steps_ / 1024);
}

}  // namespace

ModelOptions model_options(const Config& cfg, const ProcessGroups* groups) {
    ModelOptions o;
    o.recompute = cfg.train.recompute;
    if (!groups) return o;
    o.ep = groups->ep.get();
    if (cfg.parallel.shard_optimizer) o.shards = {groups->world.get(), groups->expert_dp.get()};
    return o;
}

TrainSummary train(const Config& cfg, Ops& ops, const TrainOptions& opts, const ProcessGroups* groups) {
    return Trainer(cfg, ops, opts, groups).run();
}

}  // namespace moe
