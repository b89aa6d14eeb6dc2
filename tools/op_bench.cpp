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
        const double per_step = r.per_step * floor_seconds(r, peaks);
        floor += per_step;
        if (memory_bound(r, peaks)) by_memory += per_step;
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

// The attention's operands as a step holds them.
struct Attention {
    moe::Tensor out, dout, lse;
    moe::Heads q, k, v, dq, dk, dv;
};

// The ops of one training step at a config's shapes, each timed alone (or,
// floors only, just counted), as rows in the step's order. The shapes are
// MODEL.md's symbols, R = N k the routed rows; act, stat, work and master the
// bytes of an element in each role of the precision.
class StepOps {
public:
    StepOps(const Args& args, const moe::Config& cfg, moe::Ops& ops, const moe::Precision& pr)
        : B(cfg.train.micro_batch_size), T(cfg.train.seq_len), N(B * T), H(cfg.model.hidden_size),
          nh(cfg.model.num_heads), nkv(cfg.model.num_kv_heads), hd(cfg.model.head_dim()), V(cfg.model.vocab_size),
          L(cfg.model.num_layers), E(cfg.model.moe.num_experts), k(cfg.model.moe.top_k),
          I(cfg.model.moe.expert_hidden_size), R(N * k), C(cfg.model.dynamics.controller_size),
          act(double(moe::dtype_size(pr.act))), stat(double(moe::dtype_size(pr.stat))),
          work(double(moe::dtype_size(pr.work))), master(double(moe::dtype_size(pr.master))), args_(args),
          cfg_(cfg), m_(cfg.model), ops_(ops), pr_(pr), buf_(ops, args.floors_only) {}

    // Every op, section by section.
    std::vector<Row> rows() {
        routing_plan();
        embedding_and_norms();
        dense_linears();
        rope_and_attention();
        if (m_.moe.router == moe::RouterKind::learned) router();
        dispatch_and_combine();
        experts();
        if (m_.dynamics.enabled) dynamics();
        loss_and_optimizer();
        return rows_;
    }

    const int64_t B, T, N, H, nh, nkv, hd, V, L, E, k, I, R, C;
    const double act, stat, work, master;

private:
    void time(const std::string& op, const std::string& shape, double per_step, double bytes, double flops,
              const std::function<void()>& f);
    void routing_plan();
    void embedding_and_norms();
    void linear(const std::string& name, int64_t O, double per_step, moe::DType out_dtype, bool residual);
    void dense_linears();
    void rope_and_attention();
    void attention_rows(const std::string& kernels, double per_step, const Attention& a);
    void router();
    void dispatch_and_combine();
    void experts();
    void dynamics();
    void loss_and_optimizer();

    const Args& args_;
    const moe::Config& cfg_;
    const moe::ModelConfig& m_;
    moe::Ops& ops_;
    const moe::Precision pr_;
    Buffers buf_;
    std::vector<Row> rows_;
    // Shared by the sections: the tokens and a routing plan with every
    // expert equally loaded; the [N, H] activations and gradients; the routed
    // rows [R, H] into and out of the experts and the gradient out of them;
    // the experts' weight gradients (the norm's sum of squares reads them).
    std::vector<int32_t> expert_of_slot_;
    moe::RoutingPlan plan_;
    moe::Tensor ids_, slot_row_, row_token_;
    moe::Tensor x_, y_, dx_, dy_;
    moe::Tensor xe_, ye_, dye_;
    moe::Tensor dw_gate_up_, dw_down_;
};

void StepOps::time(const std::string& op, const std::string& shape, double per_step, double bytes, double flops,
                   const std::function<void()>& f) {
    double seconds = 0;
    if (!args_.floors_only) {
        const int reps = args_.reps.value_or(20);
        f();
        ops_.synchronize();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) f();
        ops_.synchronize();
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    }
    rows_.push_back({op, shape, per_step, bytes, flops, seconds});
}

void StepOps::routing_plan() {
    moe::Rng rng(3, "opbench tokens");
    std::vector<int32_t> tokens(static_cast<size_t>(N));
    for (int32_t& t : tokens) t = int32_t(rng.next() % uint64_t(V));
    expert_of_slot_.resize(static_cast<size_t>(R));
    for (int64_t s = 0; s < R; ++s) expert_of_slot_[size_t(s)] = int32_t((s / k * k + s % k * (E / k + 1)) % E);
    plan_ = moe::build_routing_plan(expert_of_slot_.data(), int(N), int(k), int(E), {});
    ids_ = buf_.ids(tokens);
    slot_row_ = buf_.ids(plan_.slot_row);
    row_token_ = buf_.ids(plan_.row_token);
}

void StepOps::embedding_and_norms() {
    moe::Tensor table = buf_.random(pr_.work, {V, H}, 0.02), dtable = buf_.zeros(pr_.master, {V, H});
    x_ = buf_.random(pr_.act, {N, H});
    y_ = buf_.zeros(pr_.act, {N, H});
    dx_ = buf_.zeros(pr_.act, {N, H});
    dy_ = buf_.random(pr_.act, {N, H});
    const std::string NH = dims({N, H});
    time("embedding forward", NH, 1, 2 * N * H * act + N * 4, 0, [&] { ops_.embedding_forward(y_, ids_, table); });
    // Parameter gradients written over, as by a step's first micro-batch.
    time("embedding backward", NH, 1, N * H * act + V * H * master + N * 4, 0,
         [&] { ops_.embedding_backward(dtable, ids_, dy_, moe::Write::overwrite); });
    moe::Tensor w_norm = buf_.random(pr_.work, {H}), dw_norm = buf_.zeros(pr_.master, {H});
    moe::Tensor rstd = buf_.zeros(pr_.stat, {N});
    // Each block's two norms, and the final norm.
    time("rmsnorm forward", NH, 2 * L + 1, 2 * N * H * act + N * stat, 3 * N * H,
         [&] { ops_.rmsnorm_forward(y_, rstd, x_, w_norm, m_.norm_eps); });
    time("rmsnorm backward", NH, 2 * L + 1, 4 * N * H * act + N * stat, 8 * N * H, [&] {
        ops_.rmsnorm_backward(dx_, dw_norm, dy_, x_, w_norm, rstd, moe::Write::add, moe::Write::overwrite);
    });
}

// x [N, H] -> [N, O]. With `residual`, the forward adds a residual [N, O] in
// the GEMM (the attention output projection's).
void StepOps::linear(const std::string& name, int64_t O, double per_step, moe::DType out_dtype, bool residual) {
    moe::Tensor w = buf_.random(pr_.work, {O, H}, 0.02), dw = buf_.zeros(pr_.master, {O, H});
    moe::Tensor out = buf_.zeros(out_dtype, {N, O}), dout = buf_.random(pr_.act, {N, O});
    moe::Tensor res = residual ? buf_.random(pr_.act, {N, O}) : moe::Tensor{};
    const double o_bytes = double(moe::dtype_size(out_dtype)), res_bytes = double(res.bytes());
    const std::string shape = dims({N, H, O});
    time(name + " forward", shape, per_step, N * H * act + O * H * work + N * O * o_bytes + res_bytes,
         2.0 * N * H * O, [&] {
             if (residual)
                 ops_.matmul_residual_forward(out, x_, w, res);
             else
                 ops_.matmul_forward(out, x_, w, {});
         });
    // dx written, not added to, as the step's are.
    if (out_dtype == pr_.act)  // the router's fp32 logits take their gradient through the router op
        time(name + " backward", shape, per_step,
             N * O * act + N * H * act + O * H * work + N * H * act + O * H * master, 4.0 * N * H * O,
             [&] { ops_.matmul_backward(dx_, dw, {}, dout, x_, w, moe::Write::overwrite, moe::Write::overwrite); });
}

void StepOps::dense_linears() {
    linear("linear q, k, v stacked (H -> (nh + 2 nkv) hd)", (nh + 2 * nkv) * hd, L, pr_.act, false);
    linear("linear o + residual (nh hd = H -> H)", nh * hd, L, pr_.act, true);  // head_dim() is H / nh
    linear("lm head (H -> V)", V, 1, pr_.act, false);
    if (m_.moe.router == moe::RouterKind::learned) linear("router logits (H -> E)", E, L, pr_.stat, false);
}

// As the step runs: without qk-norm q, k and v stay in the stacked
// projection's rows (RoPE turns q and k there; the attention reads them there
// and writes dq, dk, dv there for the projection's backward GEMM); with
// qk-norm they are copied out and the gradients joined back.
void StepOps::rope_and_attention() {
    moe::Tensor qkv = buf_.random(pr_.act, {B, T, nh + 2 * nkv, hd});
    moe::Tensor dqkv = buf_.zeros(pr_.act, {B, T, nh + 2 * nkv, hd});
    Attention a{buf_.zeros(pr_.act, {B, T, nh, hd}), buf_.random(pr_.act, {B, T, nh, hd}),
                buf_.zeros(pr_.stat, {B, nh, T}), moe::Heads(qkv, 0, nh), moe::Heads(qkv, nh, nkv),
                moe::Heads(qkv, nh + nkv, nkv), moe::Heads(dqkv, 0, nh), moe::Heads(dqkv, nh, nkv),
                moe::Heads(dqkv, nh + nkv, nkv)};
    const double q_bytes = double(a.out.bytes()), kv_bytes = q_bytes / double(nh / nkv);
    const std::string packed = dims({B, T, nh + 2 * nkv, hd});
    if (m_.qk_norm) {
        moe::Tensor q_apart = buf_.zeros(pr_.act, {B, T, nh, hd}), k_apart = buf_.zeros(pr_.act, {B, T, nkv, hd});
        moe::Tensor v_apart = buf_.zeros(pr_.act, {B, T, nkv, hd});
        time("split q, k, v", packed, L, 2 * qkv.bytes(), 0, [&] { ops_.split_qkv(q_apart, k_apart, v_apart, qkv); });
        time("join dq, dk, dv", packed, L, 2 * qkv.bytes(), 0,
             [&] { ops_.join_qkv(dqkv, q_apart, k_apart, v_apart); });
        time("rope q, k", dims({B, T, nh + nkv, hd}), L, 2 * (q_bytes + kv_bytes), 6.0 * (q_bytes + kv_bytes) / act,
             [&] {
                 ops_.rope_forward(q_apart, m_.rope_theta, 0);
                 ops_.rope_forward(k_apart, m_.rope_theta, 0);
             });
        a.q = a.dq = q_apart;
        a.k = a.dk = k_apart;
        a.v = a.dv = v_apart;
    } else {
        time("rope q, k in the stacked rows", packed, L, 2 * (q_bytes + kv_bytes), 6.0 * (q_bytes + kv_bytes) / act,
             [&] { ops_.rope_forward(moe::Heads(qkv, 0, nh + nkv), m_.rope_theta, 0); });
    }
#if MOE_HAVE_CUDA
    // Beside the step's attention, for comparison (not a part of the step):
    // the mma.sync kernels where it runs on wgmma, and one query head a block
    // (MOE_CUDA_ATTENTION_HEADS=1) where they may take several of a kv group
    // (wgmma at head sizes 64 and 128; elsewhere the rows run the same).
    if (auto* cuda = dynamic_cast<moe::CudaOps*>(&ops_)) {
        const bool wgmma = cuda->attention_wgmma();
        const int heads = cuda->attention_heads();
        attention_rows(wgmma ? ", wgmma" : "", double(L), a);
        if (wgmma) {
            cuda->set_attention_wgmma(false);
            attention_rows(", mma.sync", 0, a);
            cuda->set_attention_wgmma(true);
        }
        if (wgmma && heads > 1 && nh / nkv > 1) {
            cuda->set_attention_heads(1);
            attention_rows(", wgmma, MOE_CUDA_ATTENTION_HEADS=1", 0, a);
            cuda->set_attention_heads(heads);
        }
        return;
    }
#endif
    attention_rows("", double(L), a);
}

void StepOps::attention_rows(const std::string& kernels, double per_step, const Attention& a) {
    const double out_bytes = double(a.out.bytes()), lse_bytes = double(a.lse.bytes());
    const double q_bytes = out_bytes, kv_bytes = q_bytes / double(nh / nkv);  // q has out's shape
    const double causal_pairs = double(B) * nh * T * (T + 1) / 2;
    const std::string shape = dims({B, T, nh, nkv, hd});
    time("attention forward" + kernels, shape, per_step, q_bytes + 2 * kv_bytes + out_bytes + lse_bytes,
         4 * causal_pairs * hd, [&] { ops_.attention_forward(a.out, a.lse, a.q, a.k, a.v); });
    time("attention backward + rope" + kernels, shape, per_step,
         2 * q_bytes + 3 * kv_bytes + 3 * kv_bytes + 2 * out_bytes + lse_bytes + q_bytes, 10 * causal_pairs * hd, [&] {
             ops_.attention_backward(a.dq, a.dk, a.dv, a.dout, a.q, a.k, a.v, a.out, a.lse, moe::Write::overwrite,
                                     m_.rope_theta);
         });
}

void StepOps::router() {
    moe::Tensor logits = buf_.random(pr_.stat, {N, E}), probs = buf_.zeros(pr_.stat, {N, E});
    moe::Tensor rlse = buf_.zeros(pr_.stat, {N}), topk_idx = buf_.zeros(moe::DType::I32, {N, k});
    moe::Tensor topk_w = buf_.zeros(pr_.stat, {N, k}), dtopk_w = buf_.random(pr_.stat, {N, k});
    moe::Tensor dlogits = buf_.zeros(pr_.stat, {N, E});
    const std::vector<double> aux_coef(size_t(E), 1e-3);
    const moe::RouterScoring scoring = moe::router_scoring(m_.moe);
    const double rbytes = double(2 * N * E * stat + N * stat + N * k * (4 + stat));
    time("router forward", dims({N, E, k}), L, rbytes, 5.0 * N * E,
         [&] { ops_.router_forward(probs, rlse, topk_idx, topk_w, logits, scoring); });
    time("router backward", dims({N, E, k}), L, rbytes + N * E * stat, 8.0 * N * E, [&] {
        ops_.router_backward(dlogits, dtopk_w, probs, rlse, topk_idx, topk_w, scoring, aux_coef, m_.moe.z_loss_weight);
    });
    moe::Tensor stats = buf_.zeros(moe::DType::F64, {E + 1});
    time("router stats", dims({N, E}), L, double(N * E * stat + N * stat), 2.0 * N * E,
         [&] { ops_.router_stats(stats, probs, rlse, scoring); });
    moe::Tensor choices = buf_.ids(expert_of_slot_).view({N, k});
    moe::Tensor planned_slot_row = buf_.zeros(moe::DType::I32, {R});
    moe::Tensor planned_row_token = buf_.zeros(moe::DType::I32, {R});
    time("routing plan (a host wait)", dims({N, k}) + " E" + std::to_string(E), L, 16.0 * R, 0, [&] {
        ops_.plan_routing(planned_slot_row, planned_row_token, choices, int(E), m_.moe.capacity_factor);
    });
}

void StepOps::dispatch_and_combine() {
    xe_ = buf_.zeros(pr_.act, {R, H});
    ye_ = buf_.random(pr_.act, {R, H});
    dye_ = buf_.zeros(pr_.act, {R, H});
    moe::Tensor topw = buf_.random(pr_.stat, {N, k}), dtopw = buf_.zeros(pr_.stat, {N, k});
    const std::string RH = dims({R, H});
    time("permute forward", RH, L, 2 * R * H * act + R * 4, 0, [&] { ops_.permute_forward(xe_, x_, row_token_); });
    // The outputs written over, as in a step.
    time("permute backward", RH, L, R * H * act + N * H * act + R * 4, double(R * H),
         [&] { ops_.permute_backward(dx_, ye_, slot_row_, moe::Write::overwrite, {}); });
    // The block's residual add rides the combine: x read, h_mid written.
    time("combine forward + residual", RH, L, R * H * act + 2 * N * H * act + N * k * (4 + stat), 2.0 * R * H + N * H,
         [&] { ops_.combine_forward(y_, ye_, topw, slot_row_, moe::Write::overwrite, x_); });
    time("combine backward", RH, L, 2 * R * H * act + N * H * act + N * k * (4 + 2 * stat), 4.0 * R * H,
         [&] { ops_.combine_backward(dye_, dtopw, dy_, ye_, topw, slot_row_, moe::Write::overwrite); });
}

void StepOps::experts() {
    moe::Tensor w_gate_up = buf_.random(pr_.work, {E, 2 * I, H}, 0.02);
    moe::Tensor w_down = buf_.random(pr_.work, {E, H, I}, 0.02);
    dw_gate_up_ = buf_.zeros(pr_.master, {E, 2 * I, H});
    dw_down_ = buf_.zeros(pr_.master, {E, H, I});
    moe::Tensor gate_up = buf_.random(pr_.act, {R, 2 * I}), a = buf_.zeros(pr_.act, {R, I});
    moe::Tensor dgate_up = buf_.zeros(pr_.act, {R, 2 * I}), da = buf_.random(pr_.act, {R, I});
    const double wbytes = double(E * I * H) * work, gbytes = double(E * I * H) * master;
    const std::string RHI = dims({R, H, I}) + " E" + std::to_string(E);
    const std::vector<int64_t>& offsets = plan_.offsets;
    // Gate and up are one GEMM of N = 2I (the fused [E, 2I, H] weight).
    time("experts gate+up forward", RHI, L, R * H * act + 2 * wbytes + 2 * R * I * act, 4.0 * R * H * I,
         [&] { ops_.grouped_matmul_forward(gate_up, xe_, w_gate_up, offsets); });
    time("experts gate+up backward", RHI, L, 2 * R * I * act + R * H * act + 2 * wbytes + R * H * act + 2 * gbytes,
         8.0 * R * H * I, [&] {
             ops_.grouped_matmul_backward(dye_, dw_gate_up_, dgate_up, xe_, w_gate_up, offsets, moe::Write::overwrite,
                                          moe::Write::overwrite);
         });
    time("experts down forward", RHI, L, R * I * act + wbytes + R * H * act, 2.0 * R * H * I,
         [&] { ops_.grouped_matmul_forward(ye_, a, w_down, offsets); });
    time("experts down backward", RHI, L, R * H * act + R * I * act + wbytes + R * I * act + gbytes, 4.0 * R * H * I,
         [&] {
             ops_.grouped_matmul_backward(da, dw_down_, dye_, a, w_down, offsets, moe::Write::overwrite,
                                          moe::Write::overwrite);
         });
    const std::string RI = dims({R, I});
    time("swiglu forward", RI, L, 3 * R * I * act, 6.0 * R * I, [&] { ops_.swiglu_forward(a, gate_up); });
    time("swiglu backward", RI, L, 5 * R * I * act, 12.0 * R * I,
         [&] { ops_.swiglu_backward(dgate_up, da, gate_up); });
}

void StepOps::dynamics() {
    const std::string NH = dims({N, H});
    moe::Tensor dv_in = buf_.zeros(pr_.act, {N, H});
    moe::Tensor c1 = buf_.random(pr_.work, {C, 2 * H}, 0.02), dc1 = buf_.zeros(pr_.master, {C, 2 * H});
    moe::Tensor c1_bias = buf_.random(pr_.work, {C}, 0.02), dc1_bias = buf_.zeros(pr_.master, {C});
    moe::Tensor hidden = buf_.random(pr_.act, {N, C}), dhidden = buf_.random(pr_.act, {N, C});
    // c1 over [h | v]: each read once, no concatenated copy; the backward
    // adds into dh and dv (read and written).
    time("dynamics c1 forward", dims({N, 2 * H, C}), L, N * 2 * H * act + C * 2 * H * work + N * C * act,
         4.0 * N * H * C, [&] { ops_.concat_matmul_forward(hidden, x_, dy_, c1, c1_bias); });
    time("dynamics c1 backward", dims({N, 2 * H, C}), L,
         N * C * act + 3 * N * 2 * H * act + C * 2 * H * (work + master), 8.0 * N * H * C, [&] {
             ops_.concat_matmul_backward(dx_, dv_in, dc1, dc1_bias, dhidden, x_, dy_, c1, moe::Write::add,
                                         moe::Write::overwrite);
         });
    moe::Tensor c2 = buf_.random(pr_.work, {3 * H, C}, 0.02), dc2 = buf_.zeros(pr_.master, {3 * H, C});
    moe::Tensor c2_bias = buf_.random(pr_.work, {3 * H}, 0.02), dc2_bias = buf_.zeros(pr_.master, {3 * H});
    moe::Tensor dctrl = buf_.random(pr_.act, {N, 3 * H});
    time("dynamics c2 backward", dims({N, C, 3 * H}), L,
         3 * N * H * act + 3 * N * C * act + 3 * H * C * (work + master), 12.0 * N * H * C, [&] {
             ops_.matmul_backward(dhidden, dc2, {}, dctrl, hidden, c2, moe::Write::overwrite, moe::Write::overwrite);
         });
    moe::Tensor mu = buf_.random(pr_.work, {H}), dmu = buf_.zeros(pr_.master, {H});
    moe::Tensor h2 = buf_.zeros(pr_.act, {N, H}), v2 = buf_.zeros(pr_.act, {N, H});
    const moe::DynamicsParams p{m_.dynamics.dt, m_.dynamics.beta_max, m_.dynamics.velocity_max, m_.dynamics.mu_min,
                                m_.dynamics.mu_max};
    time("dynamics c2 + update forward", NH, L, 4 * N * H * act + N * C * act + 3 * H * C * work,
         6.0 * N * H * C + 20.0 * N * H, [&] { ops_.dynamics_forward(h2, v2, x_, dy_, hidden, c2, c2_bias, mu, p); });
    time("dynamics c2 + update backward", NH, L, 9 * N * H * act + N * C * act + 3 * H * C * work,
         6.0 * N * H * C + 40.0 * N * H, [&] {
             ops_.dynamics_backward(dx_, dv_in, dctrl, dmu, dc2_bias, y_, y_, x_, dy_, hidden, c2, c2_bias, mu, p,
                                    moe::Write::overwrite, moe::Write::overwrite);
         });
}

void StepOps::loss_and_optimizer() {
    moe::Tensor logits = buf_.random(pr_.act, {N, V}), dlogits = buf_.zeros(pr_.act, {N, V});
    moe::Tensor losses = buf_.zeros(pr_.stat, {N});
    // The training forward's: the loss and its gradient in one pass.
    time("cross-entropy with gradient", dims({N, V}), 1, 2 * N * V * act + N * (4 + stat), 7.0 * N * V,
         [&] { ops_.cross_entropy(losses, dlogits, logits, ids_, 1.0 / double(N)); });

    // One AdamW step over the model's own parameter set, all experts on this
    // rank; left at zero, as the update's speed does not depend on the values.
    moe::ModelOptions dry;
    dry.memory = moe::ModelOptions::Memory::plan_only;
    moe::Model model(m_, ops_, pr_, int(B), int(T), dry);
    if (!args_.floors_only) model.params().allocate(ops_, pr_);
    const std::vector<moe::AdamWTensor> all = moe::AdamW(cfg_.optimizer, model.params()).tensors();
    moe::AdamWParams adam;
    adam.lr = 1e-4;
    const double n = double(model.params().numel());
    time("adamw (all tensors)", std::to_string(all.size()) + " tensors", 1, n * (7 * master + work), 12 * n,
         [&] { ops_.adamw_step(all, adam); });
    const double stack = double(E * I * H);  // gate and up fused: two stacks' worth, and down
    time("sum of squares (3 expert stacks)", dims({E, I, H}), L, 3 * stack * master, 6 * stack,
         [&] { ops_.sum_squares({dw_gate_up_, dw_down_}); });
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
    StepOps step(args, cfg, ops, pr);
    if (args.floors_only)
        spdlog::info("moe-opbench: {}, {} tokens per micro-batch, floors at {} GB/s and {} TFLOP/s (bf16 compute, "
                     "fp32 master weights), nothing timed",
                     args.config.path, step.N, args.peak_gbps, args.peak_tflops);
    else
        spdlog::info("moe-opbench: {} on {}, {} tokens per micro-batch, {} calls per op", args.config.path,
                     ops.device_name(), step.N, args.reps.value_or(20));
    const std::vector<Row> rows = step.rows();
    const Peaks peaks = args.peak_gbps > 0 ? Peaks{args.peak_gbps, args.peak_tflops} : device_peaks(ops.device_name());
    if (args.floors_only)
        print_floors(rows, peaks);
    else
        print_times(rows, peaks, ops.device_name());
    if (peaks.known()) print_step_floor(rows, peaks, step.N);
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
