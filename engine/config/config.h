// The run's configuration: every key a YAML file may set, with its default.
// load_config() reads YAML, applies --set overrides and validates everything
// before anything runs; each problem is one ConfigError line naming the key.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe {

struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// How a MoE layer chooses experts (MODEL.md "Routers").
enum class RouterKind { learned, token_id };
// The names configs, checkpoints and logs use: "learned", "token_id".
const char* name_of(RouterKind kind);
// The learned router's scores (docs/MODEL-OPTIONS.md "Scores").
enum class RouterScore { softmax, sigmoid };
const char* name_of(RouterScore kind);
// Which slots the balancing loss's f_e counts (docs/MODEL-OPTIONS.md).
enum class BalanceScope { micro_batch, global_batch };
const char* name_of(BalanceScope scope);

struct MoeConfig {
    int num_experts = 4;             // E
    int top_k = 2;                   // k
    int expert_hidden_size = 256;    // I
    RouterKind router = RouterKind::learned;
    bool normalize_top_k = true;
    RouterScore score = RouterScore::softmax;
    // Group-limited routing: experts in `groups` groups of consecutive
    // experts, a token choosing among those of its best group_limit groups
    // (0: all of them).
    int groups = 1;
    int group_limit = 0;
    // Auxiliary-loss-free balancing: set, each layer keeps an expert bias
    // updated after every step at this rate (0: kept as it is); unset: no bias.
    std::optional<double> expert_bias_rate;
    double load_balancing_weight = 0.01;
    BalanceScope balance_scope = BalanceScope::micro_batch;
    double z_loss_weight = 0.0;
    std::optional<double> capacity_factor;  // none: dropless
    // Shared experts (docs/MODEL-OPTIONS.md "Shared experts"): dense SwiGLU
    // experts every token passes through, of inner size
    // shared_expert_hidden_size each (0: expert_hidden_size).
    int shared_experts = 0;
    int shared_expert_hidden_size = 0;

    // The inner size of one shared expert.
    int shared_hidden() const { return shared_expert_hidden_size ? shared_expert_hidden_size : expert_hidden_size; }
    // The shared experts' inner size together (their fused SwiGLU's), 0 without.
    int64_t shared_inner() const { return int64_t(shared_experts) * shared_hidden(); }
};

struct DynamicsConfig {
    bool enabled = true;
    bool shared = true;        // one module for all layers, else one per layer
    int controller_size = 64;  // C
    double dt = 0.1, beta_max = 2.0, velocity_max = 10.0, mu_min = 0.0, mu_max = 2.0;
    double init_alpha = 0.9, init_beta = 0.1, init_gate = 0.5;
};

struct ModelConfig {
    int vocab_size = 256;   // V
    int hidden_size = 128;  // H
    int num_layers = 2;     // L
    int num_heads = 4;      // nh
    int num_kv_heads = 2;   // nkv
    bool qk_norm = false;
    bool tie_embeddings = false;
    double rope_theta = 10000.0;
    double norm_eps = 1e-6;
    double init_std = 0.02;  // N(0, init_std) for embeddings, projections, experts, router
    MoeConfig moe;
    DynamicsConfig dynamics;

    int head_dim() const { return hidden_size / num_heads; }
};

struct DataConfig {
    std::string train;  // glob of train shards
    std::string val;    // glob of validation shards (may be empty: no eval)
    // What the shards' ids mean (engine/io/tokenizer.h): bytes, the path of a
    // SentencePiece model, or none (ids made elsewhere, llm.c's shards).
    std::string tokenizer = "bytes";
};

// Activations the backward recomputes instead of keeping from the forward:
// none; the experts' inner activations (gate, up, SwiGLU: the largest part of
// an MoE layer's); or everything of a block but its input (full).
enum class Recompute { none, experts, full };
const char* name_of(Recompute kind);

struct TrainConfig {
    int seq_len = 128;           // T
    int micro_batch_size = 8;    // B
    int grad_accum_steps = 1;
    int steps = 100;
    Recompute recompute = Recompute::none;
};

// The learning rate after warmup (docs/MODEL-OPTIONS.md "Learning-rate schedules"):
// cosine decay to min_lr; constant at lr; or warmup-stable-decay, constant at
// lr until the last decay_fraction of train.steps, then down to min_lr.
enum class LrSchedule { cosine, constant, wsd };
const char* name_of(LrSchedule kind);
// The shape of the WSD decay from lr to min_lr.
enum class DecayShape { linear, sqrt, cosine };
const char* name_of(DecayShape kind);

struct OptimizerConfig;
// wsd: the steps of the final decay, decay_fraction of total_steps rounded.
int wsd_decay_steps(const OptimizerConfig& cfg, int total_steps);

struct OptimizerConfig {
    double lr = 3e-3;
    double min_lr = 3e-4;
    int warmup_steps = 10;
    LrSchedule schedule = LrSchedule::cosine;
    double decay_fraction = 0.2;  // wsd: the share of train.steps spent decaying
    DecayShape decay_shape = DecayShape::linear;  // wsd
    double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
    double weight_decay = 0.1;
    double grad_clip = 1.0;  // 0 disables clipping
};

struct EvalConfig {
    int every = 50;   // steps between evaluations (0: only at the end)
    int batches = 8;  // global batches (train.micro_batch_size x grad_accum_steps x ranks sequences) per evaluation
};

struct LogConfig {
    int every = 10;  // steps between progress lines and expert telemetry lines
    // An expert whose share of its layer's routed slots stays below
    // starved_share of a balanced share (1 / experts) for starved_intervals
    // log intervals in a row is reported; 0: never.
    double starved_share = 0.1;
    int starved_intervals = 3;
};

struct CheckpointConfig {
    int every = 0;  // steps between checkpoints (0: only at the end, or when stopped by a signal)
    int keep = 2;   // the newest complete checkpoints kept in run.out_dir/checkpoints
};

struct RunConfig {
    uint64_t seed = 1234;
    std::string out_dir = "runs/tiny";
    std::string device = "cpu";      // cpu | cuda | auto
    std::string nan_policy = "stop"; // stop | skip
    int threads = 0;                 // CPU threads, 0: all cores; at most the cores there
};

struct ParallelConfig {
    int expert_parallel = 1;        // ep: ranks that split the experts
    bool allow_shared_gpu = false;  // let ranks of a node share a GPU (tests; slow otherwise)
    // How GPU buffers move between ranks: nccl, mpi (staged through pinned
    // host memory: where NCCL is missing, or ranks share a GPU), or auto
    // (nccl when built with it and each rank has its own GPU).
    std::string comm = "auto";
    // How long a collective may wait for the other ranks before the ones that
    // stopped taking part are named and the job stops; 0: wait forever.
    double collective_timeout_s = 1800;
    // ZeRO-1: the fp32 masters and AdamW moments split over the ranks that
    // hold the same parameters (the world for replicated ones, the
    // expert-data-parallel group for experts).
    bool shard_optimizer = false;
};

struct Config {
    ModelConfig model;
    DataConfig data;
    TrainConfig train;
    OptimizerConfig optimizer;
    EvalConfig eval;
    LogConfig log;
    CheckpointConfig checkpoint;
    RunConfig run;
    ParallelConfig parallel;
};

// Reads path (YAML), applies overrides ("a.b=c", YAML values), validates.
// Throws ConfigError with one line naming the key and the fix.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from YAML text (tests, checkpoints).
Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides = {});
// Every key, as YAML that parse_config reads back to the same Config.
std::string to_yaml(const Config& c);

}  // namespace moe
