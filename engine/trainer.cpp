#include "engine/trainer.h"

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "comm/agreement.h"
#include "engine/checkpoint.h"
#include "engine/data_loader.h"
#include "engine/flops.h"
#include "engine/grad_sync.h"
#include "engine/layout_report.h"
#include "engine/metrics.h"
#include "engine/model.h"
#include "engine/optimizer.h"
#include "engine/stop_signal.h"
#include "engine/weights_io.h"

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

// Busiest expert's share over the mean, the worst layer: 1.0 is perfect balance.
double load_imbalance(const std::vector<std::vector<int64_t>>& routed) {
    double worst = 0;
    for (const auto& layer : routed) {
        int64_t total = 0, most = 0;
        for (int64_t c : layer) {
            total += c;
            most = std::max(most, c);
        }
        if (total > 0) worst = std::max(worst, double(most) * layer.size() / double(total));
    }
    return worst;
}

void add_counts(std::vector<std::vector<int64_t>>& sum, const std::vector<std::vector<int64_t>>& x) {
    if (sum.empty()) sum.assign(x.size(), std::vector<int64_t>(x.empty() ? 0 : x[0].size(), 0));
    for (size_t l = 0; l < x.size(); ++l)
        for (size_t e = 0; e < x[l].size(); ++e) sum[l][e] += x[l][e];
}

int world_size(const ProcessGroups* groups) { return groups ? groups->world_size() : 1; }

// Sums v over all ranks, in place.
void sum_over_world(std::vector<double>& v, const ProcessGroups* groups) {
    if (world_size(groups) > 1) groups->world->all_reduce(v.data(), int64_t(v.size()), DType::F64, ReduceOp::Sum);
}

// Mean cross-entropy over the first `batches` micro-steps of the val data
// (each rank its share), so over the same sequences whatever the layout.
double evaluate(Model& model, DataLoader& val, int batches, std::vector<int32_t>& in, std::vector<int32_t>& tg,
                const ProcessGroups* groups) {
    val.set_position(DataPosition{});
    std::vector<double> sum = {0};
    for (int i = 0; i < batches; ++i) {
        val.next_batch(in.data(), tg.data());
        sum[0] += model.forward(in.data(), tg.data()).loss;
    }
    sum_over_world(sum, groups);
    return sum[0] / batches / world_size(groups);
}

// Per-step figures every rank contributes to: summed over the world.
struct StepTotals {
    double loss = 0, aux = 0;
    int64_t dropped = 0;
    std::vector<std::vector<int64_t>> routed;  // [L][E]
    bool stop = false;  // a stop signal reached some rank: all stop after this step

    void reduce(const ProcessGroups* groups) {
        std::vector<double> flat = {loss, aux, double(dropped), double(stop)};
        for (const auto& layer : routed) flat.insert(flat.end(), layer.begin(), layer.end());
        sum_over_world(flat, groups);
        const int W = world_size(groups);
        loss = flat[0] / W;
        aux = flat[1] / W;
        dropped = int64_t(flat[2]);
        stop = flat[3] > 0;
        size_t i = 4;
        for (auto& layer : routed)
            for (auto& c : layer) c = int64_t(flat[i++]);
    }
};

}  // namespace

TrainSummary train(const Config& cfg, Ops& ops, const TrainOptions& opts, const ProcessGroups* groups) {
    namespace fs = std::filesystem;
    const ModelConfig& mc = cfg.model;
    const int B = cfg.train.micro_batch_size, T = cfg.train.seq_len, A = cfg.train.grad_accum_steps;
    const int steps = cfg.train.steps;
    const int rank = groups ? groups->world_rank() : 0, world = world_size(groups);
    const bool lead = rank == 0;  // logs and writes the run directory

    Communicator* world_comm = groups ? groups->world.get() : nullptr;
    const std::string metrics_path = cfg.run.out_dir + "/metrics.jsonl";
    std::unique_ptr<MetricsWriter> metrics;
    std::unique_ptr<DataLoader> train_data, val_data;
    std::string resume_from;  // a checkpoint directory, or empty: a fresh start
    // Bad input that one rank finds (an unwritable run directory, a shard one
    // node lacks) stops every rank with its message.
    on_all_ranks(world_comm, [&] {
        const std::string latest = latest_checkpoint(cfg.run.out_dir);
        if (opts.resume == "auto") {
            resume_from = latest;
        } else if (!opts.resume.empty()) {
            resume_from = opts.resume;
        } else if (!latest.empty()) {  // a fresh start would overwrite that run's checkpoints
            throw TrainingError("run.out_dir '" + cfg.run.out_dir + "' already holds checkpoints (newest: " + latest +
                                "): continue that run with --resume auto, or set another run.out_dir");
        }
        if (lead) {
            std::error_code ec;
            fs::create_directories(cfg.run.out_dir, ec);
            if (ec) throw TrainingError("cannot create run.out_dir '" + cfg.run.out_dir + "': " + ec.message());
            std::ofstream f(cfg.run.out_dir + "/config.yaml");
            f << to_yaml(cfg);
            if (!f)
                throw TrainingError("cannot write into run.out_dir '" + cfg.run.out_dir + "': check its permissions");
        }
        train_data = std::make_unique<DataLoader>(cfg.data.train, mc.vocab_size, T, B, cfg.run.seed,
                                                  /*shuffle=*/true, rank, world);
        if (!cfg.data.val.empty())
            val_data = std::make_unique<DataLoader>(cfg.data.val, mc.vocab_size, T, B, cfg.run.seed,
                                                    /*shuffle=*/false, rank, world);
    });
    if (world_comm && world_comm->size() > 1) check_same_on_all_ranks(*world_comm, "checkpoint to resume", resume_from);

    std::unique_ptr<Model> model_owner;
    // A GPU too small for the config may fail on some ranks only.
    on_all_ranks(world_comm, [&] {
        model_owner = std::make_unique<Model>(mc, ops, ops.training_precision(), B, T,
                                              groups ? groups->ep.get() : nullptr);
    });
    Model& model = *model_owner;
    ParameterSet& params = model.params();
    params.initialize(cfg.run.seed);
    TrainProgress progress;
    std::vector<std::string> resumed_changes;  // settings that differ from the checkpoint's
    on_all_ranks(world_comm, [&] {
        if (!opts.init_from.empty())
            load_tensors(opts.init_from, params.named(ParameterSet::Slot::Value), ops,
                         params.experts_elsewhere(mc.moe.num_experts));
        if (!resume_from.empty()) {
            const CheckpointInfo info = load_checkpoint(resume_from, cfg, params);
            progress = info.progress;
            resumed_changes = config_differences(info.config, cfg);
            train_data->set_position(progress.data);
        }
        params.refresh_work();
        if (lead) {
            truncate_metrics(metrics_path, progress.step);  // a fresh start: empty
            metrics = std::make_unique<MetricsWriter>(metrics_path);
        }
    });
    if (lead && !resume_from.empty()) {
        spdlog::info("resumed from {} at step {} (data epoch {}, sequence {})", resume_from, progress.step,
                     progress.data.epoch, progress.data.cursor);
        for (const std::string& d : resumed_changes) spdlog::info("resumed with a changed setting: {}", d);
    }
    else if (lead && opts.resume == "auto")
        spdlog::info("no checkpoint in {}: starting from scratch", checkpoints_dir(cfg.run.out_dir));
    AdamW optimizer(cfg.optimizer, params);

    const double flops_per_token = train_flops_per_token(mc, T);
    const bool gpu = ops.device() == Device::CUDA;
    const int64_t tokens_per_step = int64_t(B) * T * A * world;
    if (groups) {
        const std::vector<RankPlace> places = gather_places(*groups->world, ops.device_name());
        if (lead)
            spdlog::info("{}", layout_report(places, groups->ep_size(), mc.moe.num_experts / groups->ep_size()));
        const std::string problem = shared_gpu_problem(places);
        if (!problem.empty() && !cfg.parallel.allow_shared_gpu) throw JobError(0, problem);  // every rank sees it
    }
    double total_params = 0;  // of the whole model, whatever this rank holds
    for (const Param& p : params.all())
        total_params += double(p.numel()) * (p.is_expert_stack() && groups ? groups->ep_size() : 1);
    if (lead)
        spdlog::info("model: {:.2f}M parameters, {} layers, {} experts (top-{}, {} router), dynamics {}",
                     total_params / 1e6,
                 mc.num_layers, mc.moe.num_experts, mc.moe.top_k, mc.moe.router,
                 mc.dynamics.enabled ? (mc.dynamics.shared ? "shared" : "per layer") : "off");
    if (lead)
        spdlog::info("data: {} train tokens; {} tokens per step ({} x {} x {} accumulation x {} ranks); "
                     "activations {:.1f} MiB per rank",
                     train_data->total_tokens(), tokens_per_step, B, T, A, world, model.activation_bytes() / 1048576.0);

    std::vector<int32_t> inputs(size_t(B) * T), targets(size_t(B) * T);
    TrainSummary summary;
    summary.val_loss = std::nan("");
    const auto start = Clock::now();
    double timed_s = 0;  // time in the steps taken, without evaluation and checkpoints
    int timed_steps = 0;
    int consecutive_skips = 0;

    Communicator* ep = groups && groups->ep_size() > 1 ? groups->ep.get() : nullptr;
    double a2a_s = 0, a2a_bytes = 0;  // in the timed steps, this rank

    // Saves the state after `done` steps; every rank takes part.
    const auto save = [&](int done) {
        progress.step = done;
        progress.data = train_data->position();
        progress.steps_skipped = summary.steps_skipped;
        const auto t0 = Clock::now();
        summary.checkpoint = save_checkpoint(cfg, progress, params, groups);
        if (lead) spdlog::info("step {:>5}/{} | checkpoint {} ({:.2f} s)", done, steps, summary.checkpoint,
                               seconds_since(t0));
    };
    const auto validate = [&](int done) {
        summary.val_loss = evaluate(model, *val_data, cfg.eval.batches * A, inputs, targets, groups);
        if (lead) {
            metrics->write({{"step", done}, {"val_loss", summary.val_loss}});
            spdlog::info("step {:>5}/{} | validation loss {:.4f}", done, steps, summary.val_loss);
        }
    };
    summary.first_step = summary.steps_done = progress.step;
    summary.steps_skipped = progress.steps_skipped;
    if (progress.step >= steps) {
        if (lead)
            spdlog::info("the checkpoint is at step {} and train.steps is {}: nothing left to train (raise "
                         "train.steps to train further)",
                         progress.step, steps);
        if (val_data) validate(progress.step);
    }

    for (int step = progress.step; step < steps; ++step) {
        const auto t0 = Clock::now();
        const double a2a_s0 = ep ? ep->seconds_in_all_to_all() : 0;
        const double a2a_bytes0 = ep ? double(ep->bytes_sent_all_to_all()) : 0;
        StepTotals totals;
        GradientReducer reducer(params, groups);
        for (int a = 0; a < A; ++a) {
            train_data->next_batch(inputs.data(), targets.data());
            ForwardResult r = model.forward(inputs.data(), targets.data());
            totals.loss += r.loss / A;
            totals.aux += r.aux / A;
            totals.dropped += r.dropped;
            add_counts(totals.routed, r.routed);
            // Always backward, even after a NaN: every rank must make the same
            // collective calls; the step is judged once all ranks agree. The
            // first micro-batch writes the gradients, so none are zeroed first.
            model.backward(1.0 / A, a == 0 ? Write::overwrite : Write::add, a == A - 1 ? &reducer : nullptr);
        }
        totals.stop = stop_requested();
        totals.reduce(groups);
        reducer.finish();
        const double loss = totals.loss, aux = totals.aux, grad_norm = global_grad_norm(params, groups);
        const int64_t dropped = totals.dropped;
        const double lr = learning_rate(cfg.optimizer, step, steps);
        summary.steps_done = step + 1;
        if (!std::isfinite(loss) || !std::isfinite(aux) || !std::isfinite(grad_norm)) {
            const std::string what = "step " + std::to_string(step + 1) + ": loss " + std::to_string(loss) +
                                     ", aux " + std::to_string(aux) + ", grad norm " + std::to_string(grad_norm);
            if (cfg.run.nan_policy == "stop")
                throw TrainingError(what + " is not finite: the run stops (lower optimizer.lr, or set "
                                           "run.nan_policy=skip to skip such steps)");
            ++summary.steps_skipped;
            if (++consecutive_skips >= 10)
                throw TrainingError(what + ": 10 non-finite steps in a row, the run stops (lower optimizer.lr)");
            if (lead) spdlog::warn("{} is not finite: step skipped (run.nan_policy=skip)", what);
        } else {
            consecutive_skips = 0;
            optimizer.step(step + 1, lr, optimizer.clip_scale(grad_norm));
            const double step_s = seconds_since(t0);
            timed_s += step_s;
            ++timed_steps;
            const double step_a2a_s = ep ? ep->seconds_in_all_to_all() - a2a_s0 : 0;
            a2a_s += step_a2a_s;
            if (ep) a2a_bytes += double(ep->bytes_sent_all_to_all()) - a2a_bytes0;
            summary.last_train_loss = loss;
            summary.losses.push_back(loss);

            const double imbalance = load_imbalance(totals.routed);
            if (lead)
                metrics->write({{"step", step + 1},
                                {"loss", loss},
                                {"aux", aux},
                                {"lr", lr},
                                {"grad_norm", grad_norm},
                                {"tokens_per_s", tokens_per_step / step_s},
                                {"load_max_over_mean", imbalance},
                                {"dropped", double(dropped)},
                                {"step_s", step_s},
                                {"all_to_all_s", step_a2a_s}});
            if (lead && ((step + 1) % cfg.log.every == 0 || step == progress.step || step + 1 == steps)) {
                const double avg_tok_s = tokens_per_step * timed_steps / timed_s;
                const double eta = (steps - step - 1) * timed_s / timed_steps;
                // On GPUs, model TFLOP/s and MFU; on CPUs, GFLOP/s.
                const double flops = avg_tok_s * flops_per_token;
                const std::string speed =
                    gpu ? fmt::format("{:.1f} TFLOP/s | MFU {:.1f}%", flops / 1e12,
                                      100 * model_flops_utilization(mc, T, avg_tok_s, world))
                        : fmt::format("{:.2f} GFLOP/s", flops / 1e9);
                spdlog::info("step {:>5}/{} | loss {:.4f} | aux {:.4f} | lr {:.2e} | grad {:.3f} | {:.0f} tok/s | "
                             "{} | load max/mean {:.2f}{} | eta {}",
                             step + 1, steps, loss, aux, lr, grad_norm, avg_tok_s, speed, imbalance,
                             dropped ? " | dropped " + std::to_string(dropped) : std::string(), format_duration(eta));
            }
        }
        const bool last = step + 1 == steps;
        if (val_data && ((cfg.eval.every > 0 && (step + 1) % cfg.eval.every == 0) || last)) validate(step + 1);

        const bool stop = totals.stop;
        if (last || stop || (cfg.checkpoint.every > 0 && (step + 1) % cfg.checkpoint.every == 0)) save(step + 1);
        if (stop && !last) {
            summary.stopped = true;
            if (lead)
                spdlog::warn("stopped by a signal after step {} of {}: continue with --resume auto", step + 1, steps);
            break;
        }
    }
    summary.tokens_per_s = timed_s > 0 ? tokens_per_step * timed_steps / timed_s : 0;
    if (lead && timed_steps > 0)
        spdlog::info("done: {} steps in {}, {:.0f} tokens/s, {:.1f} ms per step", timed_steps,
                     format_duration(seconds_since(start)), summary.tokens_per_s, 1e3 * timed_s / timed_steps);
    if (groups && groups->ep_size() > 1) {
        std::vector<double> comm = {a2a_s, timed_s, a2a_bytes};  // means over the ranks
        sum_over_world(comm, groups);
        summary.all_to_all_share = comm[1] > 0 ? comm[0] / comm[1] : 0;
        if (lead && timed_steps > 0)
            spdlog::info("all-to-all: {:.1f}% of step time, {:.1f} KiB sent per rank per step (mean over ranks)",
                         100 * summary.all_to_all_share, comm[2] / world / timed_steps / 1024);
    }
    return summary;
}

}  // namespace moe
