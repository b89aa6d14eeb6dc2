// moe-opbench: each op of a training step alone, at a config's shapes (one
// micro-batch of one rank, experts equally loaded), on the run's backend.
// Per op: time per call, the bytes it must move at least (each input read
// once, each output written once) and the FLOPs it must do, as GB/s and
// TFLOP/s; and, on a GPU whose peaks are known (or given), its floor, the
// longer of those bytes at the peak bandwidth and those FLOPs at the dense
// bf16 peak, and its time as a multiple of that floor, so a slow kernel shows
// against what it could be. Then the sums over the calls a step makes of
// these ops, to set beside moe-bench's step time (the difference is launch
// gaps, host waits and the ops not listed: copies, zeroing).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/mpi_runtime.h"
#include "kernels/routing_plan.h"
#include "engine/run/backend.h"
#include "engine/config/config.h"
#include "engine/model/flops.h"
#include "engine/model/model.h"
#include "engine/moe/learned_router.h"
#include "engine/params/rng.h"
#include "engine/train/optimizer.h"
#include "tools/tool_args.h"
#if MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace {

constexpr const char* kProgram = "moe-opbench";

const char* kUsage =
    "usage: moe-opbench --config FILE [--reps N] [--peak-gbps X --peak-tflops Y] [--set key=value ...]\n"
    "       moe-opbench --config FILE --floors-only --peak-gbps X --peak-tflops Y [--set key=value ...]\n"
    "  Times each op of a training step of FILE's model alone (N calls after one\n"
    "  warm-up call, default 20) and prints time, GB/s and TFLOP/s per op, and its\n"
    "  floor at the device's peak memory bandwidth X GB/s and dense bf16 Y TFLOP/s\n"
    "  (known for H100 and H200 SXM: 3350 and 4800 GB/s, 989.4 TFLOP/s).\n"
    "  --floors-only: no device and no timing; each op's bytes, FLOPs and floor at\n"
    "  the GPU's precision (bf16 compute, fp32 master weights) and X and Y, and\n"
    "  their sums over a step, in a second on any machine.\n";

struct Args {
    moe::ConfigFlags config;
    std::optional<int> reps;  // calls timed per op; 20 unless given
    double peak_gbps = 0, peak_tflops = 0;  // 0: the device's, where known
    bool floors_only = false;               // no timing: the ops' floors at the given peaks
};

Args parse(int argc, char** argv) {
    Args a;
    moe::ToolArgs args(kProgram, kUsage, argc, argv);
    while (args.next()) {
        const std::string& arg = args.arg();
        if (args.config_flag(a.config)) continue;
        if (arg == "--reps") a.reps = int(args.integer(1));
        else if (arg == "--floors-only") a.floors_only = true;
        else if (arg == "--peak-gbps") a.peak_gbps = args.number(0, false);
        else if (arg == "--peak-tflops") a.peak_tflops = args.number(0, false);
        else args.fail_with_usage("unknown argument '" + arg + "'");
    }
    args.require_config(a.config);
    if ((a.peak_gbps > 0) != (a.peak_tflops > 0))
        args.fail_with_usage("--peak-gbps and --peak-tflops go together: give both, or neither for the device's");
    if (a.floors_only && a.peak_gbps <= 0)
        args.fail_with_usage("--floors-only reads no device: give its peaks with --peak-gbps and --peak-tflops");
    if (a.floors_only && a.reps) args.fail_with_usage("--floors-only times nothing: drop --reps");
    return a;
}

// A device's peak memory bandwidth (GB/s) and dense bf16 rate (TFLOP/s):
// the SXM parts' datasheet figures for H100 and H200, else none (zeros).
struct Peaks {
    double gbps = 0, tflops = 0;
    bool known() const { return gbps > 0; }
};
Peaks device_peaks(const std::string& device) {
    if (device.find("H200") != std::string::npos) return {4800, moe::kGpuPeakTflops};
    if (device.find("H100") != std::string::npos) return {3350, moe::kGpuPeakTflops};
    return {};
}

// Device tensors of random values, freed with it; with `shapes_only`, the
// shapes alone (no memory: nothing runs on them).
class Buffers {
public:
    Buffers(moe::Ops& ops, bool shapes_only) : ops_(ops), shapes_only_(shapes_only) {}
    ~Buffers() {
        for (void* p : owned_) ops_.release(p);
    }
    moe::Tensor zeros(moe::DType dt, std::initializer_list<int64_t> dims) {
        moe::Tensor t(nullptr, dt, dims);
        if (shapes_only_) return t;
        t.data = ops_.alloc(t.bytes());
        owned_.push_back(t.data);
        return t;
    }
    // N(0, scale) values, converted on the device where dt is not F32. A
    // pool of normals drawn once is tiled from a new offset for each tensor:
    // the values matter to timing only in not being zeros, and drawing a
    // normal for each of medium's half-billion logits would take half a
    // minute.
    moe::Tensor random(moe::DType dt, std::initializer_list<int64_t> dims, double scale = 1) {
        moe::Tensor t = zeros(dt, dims);
        if (shapes_only_) return t;
        if (pool_.empty())
            for (int i = 0; i < kPool; ++i) pool_.push_back(float(rng_.normal()));
        std::vector<float> host(size_t(t.numel()));
        offset_ += 7919;
        for (size_t i = 0; i < host.size(); ++i) host[i] = float(scale) * pool_[(i + offset_) % kPool];
        if (dt == moe::DType::F32) {
            ops_.copy_from_host(t, host.data());
        } else {
            moe::Tensor f = zeros(moe::DType::F32, dims);
            ops_.copy_from_host(f, host.data());
            ops_.copy(t, f);
        }
        return t;
    }
    moe::Tensor ids(const std::vector<int32_t>& host) {
        moe::Tensor t = zeros(moe::DType::I32, {int64_t(host.size())});
        if (shapes_only_) return t;
        ops_.copy_from_host(t, host.data());
        return t;
    }

private:
    static constexpr int kPool = 1 << 20;
    moe::Ops& ops_;
    const bool shapes_only_;
    moe::Rng rng_{7, "opbench"};
    std::vector<float> pool_;
    size_t offset_ = 0;
    std::vector<void*> owned_;
};

struct Row {
    std::string op, shape;
    double per_step;  // calls in one training step
    double bytes, flops, seconds;
};

// An op's floor: the longer of its bytes at the peak bandwidth and its
// FLOPs at the peak rate; memory-bound where the bytes take longer.
double memory_seconds(const Row& r, const Peaks& peaks) { return r.bytes / (peaks.gbps * 1e9); }
double compute_seconds(const Row& r, const Peaks& peaks) { return r.flops / (peaks.tflops * 1e12); }
double floor_seconds(const Row& r, const Peaks& peaks) {
    return std::max(memory_seconds(r, peaks), compute_seconds(r, peaks));
}
bool memory_bound(const Row& r, const Peaks& peaks) { return memory_seconds(r, peaks) > compute_seconds(r, peaks); }

// Each op's time, rates and (where the peaks are known) floor.
void print_times(const std::vector<Row>& rows, const Peaks& peaks, const std::string& device) {
    std::printf("%-34s %-24s %10s %9s %9s %10s %8s %8s %10s\n", "op", "shape", "ms/call", "GB/s", "TFLOP/s",
                "floor ms", "x floor", "calls", "ms/step");
    double step = 0;
    for (const Row& r : rows) {
        const double floor = floor_seconds(r, peaks);
        char floor_cols[32] = "         -        -";
        if (peaks.known()) std::snprintf(floor_cols, sizeof floor_cols, "%10.4f %8.1f", floor * 1e3, r.seconds / floor);
        std::printf("%-34s %-24s %10.4f %9.1f %9.2f %s %8.0f %10.3f\n", r.op.c_str(), r.shape.c_str(), r.seconds * 1e3,
                    r.bytes / r.seconds / 1e9, r.flops / r.seconds / 1e12, floor_cols, r.per_step,
                    r.per_step * r.seconds * 1e3);
        step += r.per_step * r.seconds;
    }
    std::printf("these ops' calls in one step: %.2f ms\n", step * 1e3);
    if (!peaks.known())
        std::printf("no floors: the peaks of %s are not known here (give --peak-gbps and --peak-tflops)\n",
                    device.c_str());
}

// Each op's bytes, FLOPs, floor and what bounds it.
void print_floors(const std::vector<Row>& rows, const Peaks& peaks) {
    std::printf("%-34s %-24s %10s %10s %10s %8s %8s %10s\n", "op", "shape", "GB/call", "GFLOP/call", "floor ms",
                "bound", "calls", "ms/step");
    for (const Row& r : rows) {
        const double floor = floor_seconds(r, peaks);
        std::printf("%-34s %-24s %10.4f %10.2f %10.4f %8s %8.0f %10.3f\n", r.op.c_str(), r.shape.c_str(), r.bytes / 1e9,
                    r.flops / 1e9, floor * 1e3, memory_bound(r, peaks) ? "memory" : "compute", r.per_step,
                    r.per_step * floor * 1e3);
    }
}

// The sums over a step's calls of the floors, split by what bounds each op,
// and the tokens a second a step at its floor would give.
void print_step_floor(const std::vector<Row>& rows, const Peaks& peaks, int64_t tokens) {
    double floor = 0, by_memory = 0, bytes = 0, flops = 0;
    for (const Row& r : rows) {
        floor += r.per_step * floor_seconds(r, peaks);
        if (memory_bound(r, peaks)) by_memory += r.per_step * floor_seconds(r, peaks);
        bytes += r.per_step * r.bytes;
        flops += r.per_step * r.flops;
    }
    std::printf("their floors in one step: %.2f ms (at %.0f GB/s and %.1f TFLOP/s): %.2f ms bound by memory, %.2f ms "
                "by compute; %.1f GB and %.2f TFLOP a step; %.0f tokens/s at that floor\n",
                floor * 1e3, peaks.gbps, peaks.tflops, by_memory * 1e3, (floor - by_memory) * 1e3, bytes / 1e9,
                flops / 1e12, double(tokens) / floor);
}

std::string dims(std::initializer_list<int64_t> d) {
    std::string s;
    for (int64_t x : d) s += (s.empty() ? "" : "x") + std::to_string(x);
    return s;
}

int run(const Args& args) {
    const moe::Config cfg = moe::load_config(args.config.path, args.config.overrides);
    // Floors alone need no device: the CPU backend only plans the model, and
    // the bytes are counted at the GPU's precision.
    moe::RunConfig on = cfg.run;
    if (args.floors_only) on.device = "cpu";
    std::unique_ptr<moe::Ops> backend = moe::make_backend(on, nullptr);
    moe::Ops& ops = *backend;
    const moe::Precision pr = args.floors_only ? moe::Precision::mixed_bf16() : ops.training_precision();
    const moe::ModelConfig& m = cfg.model;
    const int64_t B = cfg.train.micro_batch_size, T = cfg.train.seq_len, N = B * T, H = m.hidden_size;
    const int64_t nh = m.num_heads, nkv = m.num_kv_heads, hd = m.head_dim(), V = m.vocab_size, L = m.num_layers;
    const int64_t E = m.moe.num_experts, k = m.moe.top_k, I = m.moe.expert_hidden_size, R = N * k;
    const int64_t C = m.dynamics.controller_size;
    const bool learned = m.moe.router == moe::RouterKind::learned, dynamics = m.dynamics.enabled;
    const double act = double(moe::dtype_size(pr.act)), stat = double(moe::dtype_size(pr.stat));
    const double work = double(moe::dtype_size(pr.work)), master = double(moe::dtype_size(pr.master));
    const int reps = args.reps.value_or(20);
    Buffers buf(ops, args.floors_only);
    std::vector<Row> rows;
    const auto time = [&](const std::string& op, const std::string& shape, double per_step, double bytes,
                          double flops, const std::function<void()>& f) {
        double s = 0;
        if (!args.floors_only) {
            f();
            ops.synchronize();
            const auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < reps; ++i) f();
            ops.synchronize();
            s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
        }
        rows.push_back({op, shape, per_step, bytes, flops, s});
    };
    if (args.floors_only)
        spdlog::info("moe-opbench: {}, {} tokens per micro-batch, floors at {} GB/s and {} TFLOP/s (bf16 compute, "
                     "fp32 master weights), nothing timed",
                     args.config.path, N, args.peak_gbps, args.peak_tflops);
    else
        spdlog::info("moe-opbench: {} on {}, {} tokens per micro-batch, {} calls per op", args.config.path,
                     ops.device_name(), N, reps);

    // Tokens, and a routing plan with every expert equally loaded.
    moe::Rng rng(3, "opbench tokens");
    std::vector<int32_t> tokens(static_cast<size_t>(N)), expert_of_slot(static_cast<size_t>(R));
    for (int32_t& t : tokens) t = int32_t(rng.next() % uint64_t(V));
    for (int64_t s = 0; s < R; ++s) expert_of_slot[size_t(s)] = int32_t((s / k * k + s % k * (E / k + 1)) % E);
    const moe::RoutingPlan plan = moe::build_routing_plan(expert_of_slot.data(), int(N), int(k), int(E), {});
    moe::Tensor ids = buf.ids(tokens), slot_row = buf.ids(plan.slot_row), row_token = buf.ids(plan.row_token);

    // ---- embedding, RMSNorm ------------------------------------------------
    moe::Tensor table = buf.random(pr.work, {V, H}, 0.02), dtable = buf.zeros(pr.master, {V, H});
    moe::Tensor x = buf.random(pr.act, {N, H}), y = buf.zeros(pr.act, {N, H}), dx = buf.zeros(pr.act, {N, H});
    moe::Tensor dy = buf.random(pr.act, {N, H});
    const std::string NH = dims({N, H});
    time("embedding forward", NH, 1, 2 * N * H * act + N * 4, 0, [&] { ops.embedding_forward(y, ids, table); });
    // Parameter gradients written over, as by a step's first micro-batch.
    time("embedding backward", NH, 1, N * H * act + V * H * master + N * 4, 0,
         [&] { ops.embedding_backward(dtable, ids, dy, moe::Write::overwrite); });
    moe::Tensor w_norm = buf.random(pr.work, {H}), dw_norm = buf.zeros(pr.master, {H}), rstd = buf.zeros(pr.stat, {N});
    // Each block's two norms, and the final norm.
    time("rmsnorm forward", NH, 2 * L + 1, 2 * N * H * act + N * stat, 3 * N * H,
         [&] { ops.rmsnorm_forward(y, rstd, x, w_norm, m.norm_eps); });
    time("rmsnorm backward", NH, 2 * L + 1, 4 * N * H * act + N * stat, 8 * N * H,
         [&] { ops.rmsnorm_backward(dx, dw_norm, dy, x, w_norm, rstd, moe::Write::add, moe::Write::overwrite); });

    // ---- dense linear layers ------------------------------------------------
    // With `residual`, the forward adds a residual [N, O] in the GEMM (the
    // attention output projection's).
    const auto linear = [&](const std::string& name, int64_t O, double per_step, moe::DType out_dtype,
                            bool residual = false) {
        moe::Tensor w = buf.random(pr.work, {O, H}, 0.02), dw = buf.zeros(pr.master, {O, H});
        moe::Tensor out = buf.zeros(out_dtype, {N, O}), dout = buf.random(pr.act, {N, O});
        moe::Tensor res = residual ? buf.random(pr.act, {N, O}) : moe::Tensor{};
        const double o_bytes = double(moe::dtype_size(out_dtype)), res_bytes = double(res.bytes());
        const std::string shape = dims({N, H, O});
        time(name + " forward", shape, per_step, N * H * act + O * H * work + N * O * o_bytes + res_bytes,
             2.0 * N * H * O, [&] {
                 if (residual)
                     ops.matmul_residual_forward(out, x, w, res);
                 else
                     ops.matmul_forward(out, x, w, {});
             });
        // dx written, not added to, as the step's are.
        if (out_dtype == pr.act)  // the router's fp32 logits take their gradient through the router op
            time(name + " backward", shape, per_step,
                 N * O * act + N * H * act + O * H * work + N * H * act + O * H * master, 4.0 * N * H * O,
                 [&] { ops.matmul_backward(dx, dw, {}, dout, x, w, moe::Write::overwrite, moe::Write::overwrite); });
    };
    linear("linear q, k, v stacked (H -> (nh + 2 nkv) hd)", (nh + 2 * nkv) * hd, L, pr.act);
    linear("linear o + residual (nh hd = H -> H)", nh * hd, L, pr.act, true);  // head_dim() is H / nh
    linear("lm head (H -> V)", V, 1, pr.act);
    if (learned) linear("router logits (H -> E)", E, L, pr.stat);

    // ---- RoPE, attention ------------------------------------------------------
    // As the step runs: without qk-norm q, k and v stay in the stacked
    // projection's rows (RoPE turns q and k there; the attention reads them
    // there and writes dq, dk, dv there for the projection's backward GEMM);
    // with qk-norm they are copied out and the gradients joined back.
    moe::Tensor qkv = buf.random(pr.act, {B, T, nh + 2 * nkv, hd}), dqkv = buf.zeros(pr.act, {B, T, nh + 2 * nkv, hd});
    moe::Tensor out = buf.zeros(pr.act, {B, T, nh, hd}), dout = buf.random(pr.act, {B, T, nh, hd});
    moe::Tensor lse = buf.zeros(pr.stat, {B, nh, T});
    moe::Heads q(qkv, 0, nh), kk(qkv, nh, nkv), vv(qkv, nh + nkv, nkv);
    moe::Heads dq(dqkv, 0, nh), dk(dqkv, nh, nkv), dv(dqkv, nh + nkv, nkv);
    const double q_bytes = double(out.bytes()), kv_bytes = q_bytes / double(nh / nkv);
    const std::string packed = dims({B, T, nh + 2 * nkv, hd});
    if (m.qk_norm) {
        moe::Tensor q_apart = buf.zeros(pr.act, {B, T, nh, hd}), k_apart = buf.zeros(pr.act, {B, T, nkv, hd});
        moe::Tensor v_apart = buf.zeros(pr.act, {B, T, nkv, hd});
        time("split q, k, v", packed, L, 2 * qkv.bytes(), 0, [&] { ops.split_qkv(q_apart, k_apart, v_apart, qkv); });
        time("join dq, dk, dv", packed, L, 2 * qkv.bytes(), 0, [&] { ops.join_qkv(dqkv, q_apart, k_apart, v_apart); });
        time("rope q, k", dims({B, T, nh + nkv, hd}), L, 2 * (q_bytes + kv_bytes), 6.0 * (q_bytes + kv_bytes) / act,
             [&] {
                 ops.rope_forward(q_apart, m.rope_theta, 0);
                 ops.rope_forward(k_apart, m.rope_theta, 0);
             });
        q = q_apart;
        kk = k_apart;
        vv = v_apart;
        dq = q_apart;
        dk = k_apart;
        dv = v_apart;
    } else {
        time("rope q, k in the stacked rows", packed, L, 2 * (q_bytes + kv_bytes), 6.0 * (q_bytes + kv_bytes) / act,
             [&] { ops.rope_forward(moe::Heads(qkv, 0, nh + nkv), m.rope_theta, 0); });
    }
    const double causal_pairs = double(B) * nh * T * (T + 1) / 2;
    const std::string att = dims({B, T, nh, nkv, hd});
    const auto attention = [&](const std::string& kernels, double per_step) {
        time("attention forward" + kernels, att, per_step, q_bytes + 2 * kv_bytes + double(out.bytes() + lse.bytes()),
             4 * causal_pairs * hd, [&] { ops.attention_forward(out, lse, q, kk, vv); });
        time("attention backward + rope" + kernels, att, per_step,
             2 * q_bytes + 3 * kv_bytes + 3 * kv_bytes + 2 * double(out.bytes()) + double(lse.bytes()) + q_bytes,
             10 * causal_pairs * hd,
             [&] {
                 ops.attention_backward(dq, dk, dv, dout, q, kk, vv, out, lse, moe::Write::overwrite, m.rope_theta);
             });
    };
#if MOE_HAVE_CUDA
    // Beside the step's attention, for comparison (not a part of the step):
    // the mma.sync kernels where it runs on wgmma, and one query head a block
    // (MOE_CUDA_ATTENTION_HEADS=1) where they may take several of a kv group
    // (wgmma at head sizes 64 and 128; elsewhere the rows run the same).
    if (auto* cuda = dynamic_cast<moe::CudaOps*>(&ops)) {
        const bool wgmma = cuda->attention_wgmma();
        const int heads = cuda->attention_heads();
        attention(wgmma ? ", wgmma" : "", double(L));
        if (wgmma) {
            cuda->set_attention_wgmma(false);
            attention(", mma.sync", 0);
            cuda->set_attention_wgmma(true);
        }
        if (wgmma && heads > 1 && nh / nkv > 1) {
            cuda->set_attention_heads(1);
            attention(", wgmma, MOE_CUDA_ATTENTION_HEADS=1", 0);
            cuda->set_attention_heads(heads);
        }
    } else {
        attention("", double(L));
    }
#else
    attention("", double(L));
#endif

    // ---- router, permutation, experts ------------------------------------------
    if (learned) {
        moe::Tensor logits = buf.random(pr.stat, {N, E}), probs = buf.zeros(pr.stat, {N, E});
        moe::Tensor rlse = buf.zeros(pr.stat, {N}), topk_idx = buf.zeros(moe::DType::I32, {N, k});
        moe::Tensor topk_w = buf.zeros(pr.stat, {N, k}), dtopk_w = buf.random(pr.stat, {N, k});
        moe::Tensor dlogits = buf.zeros(pr.stat, {N, E});
        const std::vector<double> aux_coef(size_t(E), 1e-3);
        const moe::RouterScoring scoring = moe::router_scoring(m.moe);
        const double rbytes = double(2 * N * E * stat + N * stat + N * k * (4 + stat));
        time("router forward", dims({N, E, k}), L, rbytes, 5.0 * N * E,
             [&] { ops.router_forward(probs, rlse, topk_idx, topk_w, logits, scoring); });
        time("router backward", dims({N, E, k}), L, rbytes + N * E * stat, 8.0 * N * E, [&] {
            ops.router_backward(dlogits, dtopk_w, probs, rlse, topk_idx, topk_w, scoring, aux_coef,
                                m.moe.z_loss_weight);
        });
        moe::Tensor stats = buf.zeros(moe::DType::F64, {E + 1});
        time("router stats", dims({N, E}), L, double(N * E * stat + N * stat), 2.0 * N * E,
             [&] { ops.router_stats(stats, probs, rlse, scoring); });
        moe::Tensor choices = buf.ids(expert_of_slot).view({N, k});
        moe::Tensor planned_slot_row = buf.zeros(moe::DType::I32, {R});
        moe::Tensor planned_row_token = buf.zeros(moe::DType::I32, {R});
        time("routing plan (a host wait)", dims({N, k}) + " E" + std::to_string(E), L, 16.0 * R, 0, [&] {
            ops.plan_routing(planned_slot_row, planned_row_token, choices, int(E), m.moe.capacity_factor);
        });
    }
    moe::Tensor xe = buf.zeros(pr.act, {R, H}), ye = buf.random(pr.act, {R, H}), dye = buf.zeros(pr.act, {R, H});
    moe::Tensor topw = buf.random(pr.stat, {N, k}), dtopw = buf.zeros(pr.stat, {N, k});
    const std::string RH = dims({R, H});
    time("permute forward", RH, L, 2 * R * H * act + R * 4, 0, [&] { ops.permute_forward(xe, x, row_token); });
    // The outputs written over, as in a step.
    time("permute backward", RH, L, R * H * act + N * H * act + R * 4, double(R * H),
         [&] { ops.permute_backward(dx, ye, slot_row, moe::Write::overwrite, {}); });
    // The block's residual add rides the combine: x read, h_mid written.
    time("combine forward + residual", RH, L, R * H * act + 2 * N * H * act + N * k * (4 + stat), 2.0 * R * H + N * H,
         [&] { ops.combine_forward(y, ye, topw, slot_row, moe::Write::overwrite, x); });
    time("combine backward", RH, L, 2 * R * H * act + N * H * act + N * k * (4 + 2 * stat), 4.0 * R * H,
         [&] { ops.combine_backward(dye, dtopw, dy, ye, topw, slot_row, moe::Write::overwrite); });

    moe::Tensor w_gate_up = buf.random(pr.work, {E, 2 * I, H}, 0.02), w_down = buf.random(pr.work, {E, H, I}, 0.02);
    moe::Tensor dw_gate_up = buf.zeros(pr.master, {E, 2 * I, H}), dw_down = buf.zeros(pr.master, {E, H, I});
    moe::Tensor gate_up = buf.random(pr.act, {R, 2 * I}), a = buf.zeros(pr.act, {R, I});
    moe::Tensor dgate_up = buf.zeros(pr.act, {R, 2 * I}), da = buf.random(pr.act, {R, I});
    const double wbytes = double(E * I * H) * work, gbytes = double(E * I * H) * master;
    const std::string RHI = dims({R, H, I}) + " E" + std::to_string(E);
    // Gate and up are one GEMM of N = 2I (the fused [E, 2I, H] weight).
    time("experts gate+up forward", RHI, L, R * H * act + 2 * wbytes + 2 * R * I * act, 4.0 * R * H * I,
         [&] { ops.grouped_matmul_forward(gate_up, xe, w_gate_up, plan.offsets); });
    time("experts gate+up backward", RHI, L, 2 * R * I * act + R * H * act + 2 * wbytes + R * H * act + 2 * gbytes,
         8.0 * R * H * I, [&] {
             ops.grouped_matmul_backward(dye, dw_gate_up, dgate_up, xe, w_gate_up, plan.offsets,
                                         moe::Write::overwrite, moe::Write::overwrite);
         });
    time("experts down forward", RHI, L, R * I * act + wbytes + R * H * act, 2.0 * R * H * I,
         [&] { ops.grouped_matmul_forward(ye, a, w_down, plan.offsets); });
    time("experts down backward", RHI, L, R * H * act + R * I * act + wbytes + R * I * act + gbytes,
         4.0 * R * H * I, [&] {
             ops.grouped_matmul_backward(da, dw_down, dye, a, w_down, plan.offsets, moe::Write::overwrite,
                                         moe::Write::overwrite);
         });
    const std::string RI = dims({R, I});
    time("swiglu forward", RI, L, 3 * R * I * act, 6.0 * R * I, [&] { ops.swiglu_forward(a, gate_up); });
    time("swiglu backward", RI, L, 5 * R * I * act, 12.0 * R * I,
         [&] { ops.swiglu_backward(dgate_up, da, gate_up); });

    // ---- INL dynamics ------------------------------------------------------------
    if (dynamics) {
        moe::Tensor dv_in = buf.zeros(pr.act, {N, H});
        moe::Tensor c1 = buf.random(pr.work, {C, 2 * H}, 0.02), dc1 = buf.zeros(pr.master, {C, 2 * H});
        moe::Tensor c1_bias = buf.random(pr.work, {C}, 0.02), dc1_bias = buf.zeros(pr.master, {C});
        moe::Tensor hidden = buf.random(pr.act, {N, C}), dhidden = buf.random(pr.act, {N, C});
        // c1 over [h | v]: each read once, no concatenated copy; the backward
        // adds into dh and dv (read and written).
        time("dynamics c1 forward", dims({N, 2 * H, C}), L, N * 2 * H * act + C * 2 * H * work + N * C * act,
             4.0 * N * H * C, [&] { ops.concat_matmul_forward(hidden, x, dy, c1, c1_bias); });
        time("dynamics c1 backward", dims({N, 2 * H, C}), L,
             N * C * act + 3 * N * 2 * H * act + C * 2 * H * (work + master), 8.0 * N * H * C, [&] {
                 ops.concat_matmul_backward(dx, dv_in, dc1, dc1_bias, dhidden, x, dy, c1, moe::Write::add,
                                            moe::Write::overwrite);
             });
        moe::Tensor c2 = buf.random(pr.work, {3 * H, C}, 0.02), dc2 = buf.zeros(pr.master, {3 * H, C});
        moe::Tensor c2_bias = buf.random(pr.work, {3 * H}, 0.02), dc2_bias = buf.zeros(pr.master, {3 * H});
        moe::Tensor dctrl = buf.random(pr.act, {N, 3 * H});
        time("dynamics c2 backward", dims({N, C, 3 * H}), L,
             3 * N * H * act + 3 * N * C * act + 3 * H * C * (work + master), 12.0 * N * H * C, [&] {
                 ops.matmul_backward(dhidden, dc2, {}, dctrl, hidden, c2, moe::Write::overwrite, moe::Write::overwrite);
             });
        moe::Tensor mu = buf.random(pr.work, {H}), dmu = buf.zeros(pr.master, {H});
        moe::Tensor h2 = buf.zeros(pr.act, {N, H}), v2 = buf.zeros(pr.act, {N, H});
        const moe::DynamicsParams p{m.dynamics.dt, m.dynamics.beta_max, m.dynamics.velocity_max, m.dynamics.mu_min,
                                    m.dynamics.mu_max};
        time("dynamics c2 + update forward", NH, L, 4 * N * H * act + N * C * act + 3 * H * C * work,
             6.0 * N * H * C + 20.0 * N * H, [&] { ops.dynamics_forward(h2, v2, x, dy, hidden, c2, c2_bias, mu, p); });
        time("dynamics c2 + update backward", NH, L, 9 * N * H * act + N * C * act + 3 * H * C * work,
             6.0 * N * H * C + 40.0 * N * H, [&] {
                 ops.dynamics_backward(dx, dv_in, dctrl, dmu, dc2_bias, y, y, x, dy, hidden, c2, c2_bias, mu, p,
                                       moe::Write::overwrite, moe::Write::overwrite);
             });
    }

    // ---- loss ----------------------------------------------------------------------
    moe::Tensor logits = buf.random(pr.act, {N, V}), dlogits = buf.zeros(pr.act, {N, V});
    moe::Tensor losses = buf.zeros(pr.stat, {N});
    // The training forward's: the loss and its gradient in one pass.
    time("cross-entropy with gradient", dims({N, V}), 1, 2 * N * V * act + N * (4 + stat), 7.0 * N * V,
         [&] { ops.cross_entropy(losses, dlogits, logits, ids, 1.0 / double(N)); });

    // ---- optimizer: one step over all the model's parameters ------------------------------
    // The model's own parameter set, all experts on this rank; left at zero,
    // as the update's speed does not depend on the values.
    moe::ModelOptions dry;
    dry.memory = moe::ModelOptions::Memory::plan_only;
    moe::Model model(m, ops, pr, int(B), int(T), dry);
    if (!args.floors_only) model.params().allocate(ops, pr);
    const std::vector<moe::AdamWTensor> all = moe::AdamW(cfg.optimizer, model.params()).tensors();
    moe::AdamWParams adam;
    adam.lr = 1e-4;
    const double n = double(model.params().numel());
    time("adamw (all tensors)", std::to_string(all.size()) + " tensors", 1, n * (7 * master + work), 12 * n,
         [&] { ops.adamw_step(all, adam); });
    const double stack = double(E * I * H);  // gate and up fused: two stacks' worth, and down
    time("sum of squares (3 expert stacks)", dims({E, I, H}), L, 3 * stack * master, 6 * stack,
         [&] { ops.sum_squares({dw_gate_up, dw_down}); });

    const Peaks peaks = args.peak_gbps > 0 ? Peaks{args.peak_gbps, args.peak_tflops} : device_peaks(ops.device_name());
    if (args.floors_only)
        print_floors(rows, peaks);
    else
        print_times(rows, peaks, ops.device_name());
    if (peaks.known()) print_step_floor(rows, peaks, N);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    spdlog::set_pattern("[%H:%M:%S] %l %v");
    moe::MpiRuntime mpi(&argc, &argv);
    const Args args = parse(argc, argv);
    try {
        return run(args);
    } catch (const std::exception& e) {
        moe::exit_with_error(kProgram, e.what());
    }
}
