// Config: defaults, full files, --set overrides, the to_yaml round trip, and
// one clear error line (key path + fix) for each kind of bad configuration.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "tests/catch.h"

using moe::Config;
using moe::ConfigError;

namespace {

const char* kTrain = "data:\n  train: shards/train_*.bin\n";

// The message parse_config throws, or "" when it accepts the text.
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
    try {
        moe::parse_config(yaml, overrides);
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "";
}

// Bad input, and the fragments its message must contain (key path, fix).
struct Bad {
    std::string yaml;
    std::vector<std::string> overrides;
    std::vector<std::string> expected;
};

void require_errors(const std::vector<Bad>& cases) {
    for (const Bad& bad : cases) {
        INFO("yaml:\n" << bad.yaml);
        const std::string message = error_of(bad.yaml, bad.overrides);
        INFO("message: " << message);
        REQUIRE(message.rfind("config: ", 0) == 0);
        REQUIRE(message.find('\n') == std::string::npos);  // one line
        for (const std::string& fragment : bad.expected) {
            INFO("expected: " << fragment);
            REQUIRE(message.find(fragment) != std::string::npos);
        }
    }
}

// Field by field, independently of the schema table in config.cpp.
void require_same(const Config& a, const Config& b) {
    const moe::ModelConfig &ma = a.model, &mb = b.model;
    CHECK(ma.vocab_size == mb.vocab_size);
    CHECK(ma.hidden_size == mb.hidden_size);
    CHECK(ma.num_layers == mb.num_layers);
    CHECK(ma.num_heads == mb.num_heads);
    CHECK(ma.num_kv_heads == mb.num_kv_heads);
    CHECK(ma.qk_norm == mb.qk_norm);
    CHECK(ma.tie_embeddings == mb.tie_embeddings);
    CHECK(ma.rope_theta == mb.rope_theta);
    CHECK(ma.norm_eps == mb.norm_eps);
    CHECK(ma.init_std == mb.init_std);
    CHECK(ma.moe.num_experts == mb.moe.num_experts);
    CHECK(ma.moe.top_k == mb.moe.top_k);
    CHECK(ma.moe.expert_hidden_size == mb.moe.expert_hidden_size);
    CHECK(ma.moe.router == mb.moe.router);
    CHECK(ma.moe.normalize_top_k == mb.moe.normalize_top_k);
    CHECK(ma.moe.load_balancing_weight == mb.moe.load_balancing_weight);
    CHECK(ma.moe.z_loss_weight == mb.moe.z_loss_weight);
    CHECK(ma.moe.capacity_factor == mb.moe.capacity_factor);
    CHECK(ma.moe.shared_experts == mb.moe.shared_experts);
    CHECK(ma.moe.shared_expert_hidden_size == mb.moe.shared_expert_hidden_size);
    CHECK(ma.dynamics.enabled == mb.dynamics.enabled);
    CHECK(ma.dynamics.shared == mb.dynamics.shared);
    CHECK(ma.dynamics.controller_size == mb.dynamics.controller_size);
    CHECK(ma.dynamics.dt == mb.dynamics.dt);
    CHECK(ma.dynamics.beta_max == mb.dynamics.beta_max);
    CHECK(ma.dynamics.velocity_max == mb.dynamics.velocity_max);
    CHECK(ma.dynamics.mu_min == mb.dynamics.mu_min);
    CHECK(ma.dynamics.mu_max == mb.dynamics.mu_max);
    CHECK(ma.dynamics.init_alpha == mb.dynamics.init_alpha);
    CHECK(ma.dynamics.init_beta == mb.dynamics.init_beta);
    CHECK(ma.dynamics.init_gate == mb.dynamics.init_gate);
    CHECK(a.data.train == b.data.train);
    CHECK(a.data.val == b.data.val);
    CHECK(a.data.tokenizer == b.data.tokenizer);
    CHECK(a.train.seq_len == b.train.seq_len);
    CHECK(a.train.micro_batch_size == b.train.micro_batch_size);
    CHECK(a.train.grad_accum_steps == b.train.grad_accum_steps);
    CHECK(a.train.steps == b.train.steps);
    CHECK(a.optimizer.lr == b.optimizer.lr);
    CHECK(a.optimizer.min_lr == b.optimizer.min_lr);
    CHECK(a.optimizer.warmup_steps == b.optimizer.warmup_steps);
    CHECK(a.optimizer.beta1 == b.optimizer.beta1);
    CHECK(a.optimizer.beta2 == b.optimizer.beta2);
    CHECK(a.optimizer.eps == b.optimizer.eps);
    CHECK(a.optimizer.weight_decay == b.optimizer.weight_decay);
    CHECK(a.optimizer.grad_clip == b.optimizer.grad_clip);
    CHECK(a.eval.every == b.eval.every);
    CHECK(a.eval.batches == b.eval.batches);
    CHECK(a.log.every == b.log.every);
    CHECK(a.run.seed == b.run.seed);
    CHECK(a.run.out_dir == b.run.out_dir);
    CHECK(a.run.device == b.run.device);
    CHECK(a.run.nan_policy == b.run.nan_policy);
    CHECK(a.run.threads == b.run.threads);
    CHECK(a.parallel.expert_parallel == b.parallel.expert_parallel);
    CHECK(a.parallel.allow_shared_gpu == b.parallel.allow_shared_gpu);
    CHECK(a.parallel.comm == b.parallel.comm);
    CHECK(a.parallel.collective_timeout_s == b.parallel.collective_timeout_s);
}

// Every field away from its default (and valid).
Config unusual_config() {
    Config c;
    moe::ModelConfig& m = c.model;
    m.vocab_size = 50257;
    m.hidden_size = 96;
    m.num_layers = 3;
    m.num_heads = 6;
    m.num_kv_heads = 3;
    m.qk_norm = true;
    m.tie_embeddings = true;
    m.rope_theta = 500000.5;
    m.norm_eps = 1.0 / 3.0 * 1e-5;
    m.init_std = 0.1;
    m.moe.num_experts = 8;
    m.moe.top_k = 1;
    m.moe.expert_hidden_size = 192;
    m.moe.router = moe::RouterKind::token_id;
    m.moe.normalize_top_k = false;
    m.moe.load_balancing_weight = 0.0;
    m.moe.z_loss_weight = 1e-3;
    m.moe.capacity_factor = 1.25;
    m.moe.shared_experts = 2;
    m.moe.shared_expert_hidden_size = 96;
    m.dynamics.enabled = false;
    m.dynamics.shared = false;
    m.dynamics.controller_size = 32;
    m.dynamics.dt = 0.05;
    m.dynamics.beta_max = 3.0;
    m.dynamics.velocity_max = 7.5;
    m.dynamics.mu_min = -1.0 / 7.0;
    m.dynamics.mu_max = 2.718281828459045;
    m.dynamics.init_alpha = 0.123456789012345678;
    m.dynamics.init_beta = 0.2;
    m.dynamics.init_gate = 0.75;
    c.data.train = "data/\"odd\" dir\\train_*.bin";
    c.data.val = "tab\there: #not a comment";
    c.data.tokenizer = "models/my tokenizer.model";
    c.train.seq_len = 64;
    c.train.micro_batch_size = 3;
    c.train.grad_accum_steps = 4;
    c.train.steps = 1000;
    c.optimizer.lr = 6e-4;
    c.optimizer.min_lr = 0.0;
    c.optimizer.warmup_steps = 1000;
    c.optimizer.beta1 = 0.0;
    c.optimizer.beta2 = 0.999;
    c.optimizer.eps = 1e-300;
    c.optimizer.weight_decay = 0.0;
    c.optimizer.grad_clip = 0.0;
    c.eval.every = 0;
    c.eval.batches = 1;
    c.log.every = 1;
    c.run.seed = 18446744073709551615ull;
    c.run.out_dir = "true";  // a string that looks like a bool
    c.run.device = "auto";
    c.run.nan_policy = "skip";
    c.run.threads = 2;
    c.parallel.expert_parallel = 4;
    c.parallel.allow_shared_gpu = true;
    c.parallel.comm = "mpi";
    c.parallel.collective_timeout_s = 12.5;
    return c;
}

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("moe_test_config_" + name)).string();
}

}  // namespace

TEST_CASE("an empty document gives the defaults", "[unit]") {
    Config expected;
    expected.data.train = "shards/train_*.bin";
    require_same(moe::parse_config("", {"data.train=shards/train_*.bin"}), expected);
    require_same(moe::parse_config(kTrain), expected);
    // Sections present but empty, and comments only, are empty too.
    require_same(moe::parse_config(std::string("# nothing\nmodel:\ntrain:\n") + kTrain), expected);
}

TEST_CASE("a full file parses", "[unit]") {
    const std::string yaml = R"(
model:
  vocab_size: 512
  hidden_size: 64
  num_layers: 4
  num_heads: 8
  num_kv_heads: 4
  qk_norm: true
  rope_theta: 1.0e6
  moe:
    num_experts: 6
    top_k: 1
    router: token_id
    capacity_factor: 1.5
  dynamics:
    shared: false
    controller_size: 16
    mu_min: -0.5
data:
  train: a/train_*.bin
  val: a/val_*.bin
train:
  seq_len: 32
  steps: 20
optimizer:
  lr: 1e-3
  min_lr: 0
  warmup_steps: 20
eval: {every: 5, batches: 2}
log:
  every: 1
run:
  seed: 42
  out_dir: runs/x
  device: cuda
  nan_policy: skip
  threads: 1
parallel:
  expert_parallel: 3
)";
    const Config c = moe::parse_config(yaml);
    CHECK(c.model.vocab_size == 512);
    CHECK(c.model.hidden_size == 64);
    CHECK(c.model.num_layers == 4);
    CHECK(c.model.num_heads == 8);
    CHECK(c.model.num_kv_heads == 4);
    CHECK(c.model.qk_norm);
    CHECK(c.model.rope_theta == 1e6);
    CHECK(c.model.moe.num_experts == 6);
    CHECK(c.model.moe.top_k == 1);
    CHECK(c.model.moe.router == moe::RouterKind::token_id);
    REQUIRE(c.model.moe.capacity_factor.has_value());
    CHECK(*c.model.moe.capacity_factor == 1.5);
    CHECK_FALSE(c.model.dynamics.shared);
    CHECK(c.model.dynamics.controller_size == 16);
    CHECK(c.model.dynamics.mu_min == -0.5);
    CHECK(c.data.train == "a/train_*.bin");
    CHECK(c.data.val == "a/val_*.bin");
    CHECK(c.train.seq_len == 32);
    CHECK(c.train.steps == 20);
    CHECK(c.optimizer.lr == 1e-3);
    CHECK(c.optimizer.min_lr == 0.0);
    CHECK(c.optimizer.warmup_steps == 20);
    CHECK(c.eval.every == 5);
    CHECK(c.eval.batches == 2);
    CHECK(c.log.every == 1);
    CHECK(c.run.seed == 42);
    CHECK(c.run.out_dir == "runs/x");
    CHECK(c.run.device == "cuda");
    CHECK(c.run.nan_policy == "skip");
    CHECK(c.run.threads == 1);
    CHECK(c.parallel.expert_parallel == 3);
    // Keys the file leaves out keep their defaults.
    const Config defaults;
    CHECK(c.model.tie_embeddings == defaults.model.tie_embeddings);
    CHECK(c.model.moe.expert_hidden_size == defaults.model.moe.expert_hidden_size);
    CHECK(c.train.micro_batch_size == defaults.train.micro_batch_size);
    CHECK(c.optimizer.beta2 == defaults.optimizer.beta2);

    SECTION("the same text from a file") {
        const std::string path = temp_path("full.yaml");
        std::ofstream(path) << yaml;
        require_same(moe::load_config(path), c);
        std::remove(path.c_str());
    }
}

TEST_CASE("the shipped tiny config is valid", "[unit]") {
    REQUIRE_NOTHROW(moe::load_config(MOE_SOURCE_DIR "/configs/tiny.yaml"));
}

TEST_CASE("overrides (--set) apply before validation", "[unit]") {
    const std::string yaml = std::string(kTrain) +
                             "model:\n  moe:\n    num_experts: 2\n    top_k: 3\n    capacity_factor: 2.0\n";
    REQUIRE(error_of(yaml).find("model.moe.top_k") != std::string::npos);  // invalid without the override

    const Config c = moe::parse_config(yaml, {"model.moe.top_k=1", "model.moe.capacity_factor=null", "run.device=cuda",
                                              "model.qk_norm=true", "optimizer.lr=2.5e-3", "train.steps=70",
                                              "train.steps=90", "data.val=", "data.train=\"*.bin\""});
    CHECK(c.model.moe.top_k == 1);
    CHECK_FALSE(c.model.moe.capacity_factor.has_value());
    CHECK(c.run.device == "cuda");
    CHECK(c.model.qk_norm);
    CHECK(c.optimizer.lr == 2.5e-3);
    CHECK(c.train.steps == 90);  // the last one wins
    CHECK(c.data.val.empty());
    CHECK(c.data.train == "*.bin");

    const Config set = moe::parse_config(kTrain, {"model.moe.capacity_factor=0.5"});
    REQUIRE(set.model.moe.capacity_factor.has_value());
    CHECK(*set.model.moe.capacity_factor == 0.5);
}

TEST_CASE("to_yaml round-trips every key exactly", "[unit]") {
    SECTION("non-default values, capacity factor set") {
        const Config c = unusual_config();
        const std::string yaml = moe::to_yaml(c);
        INFO(yaml);
        const Config back = moe::parse_config(yaml);
        require_same(back, c);
        CHECK(moe::to_yaml(back) == yaml);
    }
    SECTION("capacity factor unset (dropless)") {
        Config c = unusual_config();
        c.model.moe.capacity_factor.reset();
        const std::string yaml = moe::to_yaml(c);
        CHECK(yaml.find("capacity_factor: null") != std::string::npos);
        require_same(moe::parse_config(yaml), c);
    }
    SECTION("doubles at full precision") {
        for (const double v : {0.1 + 0.2, std::nextafter(1.0, 2.0), 1e16 + 2, 123456789012345678.0, 1e300, 5e-324,
                               10000.0, 4.9406564584124654e-320}) {
            Config c;
            c.data.train = "x";
            c.model.rope_theta = v;
            INFO(moe::to_yaml(c));
            CHECK(moe::parse_config(moe::to_yaml(c)).model.rope_theta == v);
        }
    }
    SECTION("defaults") {
        Config c;
        c.data.train = "x";
        require_same(moe::parse_config(moe::to_yaml(c)), c);
    }
    SECTION("the emitted layout is nested by section") {
        const std::string yaml = moe::to_yaml(unusual_config());
        CHECK(yaml.rfind("model:\n  vocab_size: 50257\n", 0) == 0);
        CHECK(yaml.find("\n  moe:\n    num_experts: 8\n") != std::string::npos);
        CHECK(yaml.find("\nparallel:\n  expert_parallel: 4\n") != std::string::npos);
    }
}

TEST_CASE("unknown keys and sections are named with a suggestion", "[unit]") {
    require_errors({
        {std::string(kTrain) + "model:\n  hiden_size: 64\n", {},
         {"unknown key 'model.hiden_size'", "did you mean 'model.hidden_size'?"}},
        {std::string(kTrain) + "model:\n  moe:\n    topk: 1\n", {},
         {"unknown key 'model.moe.topk'", "did you mean 'model.moe.top_k'?"}},
        {std::string(kTrain) + "modle:\n  hidden_size: 64\n", {},
         {"unknown section 'modle'", "did you mean 'model'?"}},
        {std::string(kTrain) + "train:\n  banana: 1\n", {},
         {"unknown key 'train.banana'", "keys in train: seq_len, micro_batch_size, grad_accum_steps, steps"}},
        {std::string(kTrain) + "train:\n  steps: 5\n  steps: 6\n", {}, {"duplicate key 'train.steps'"}},
    });
}

TEST_CASE("values of the wrong type are named", "[unit]") {
    require_errors({
        {std::string(kTrain) + "model:\n  num_layers: two\n", {},
         {"model.num_layers must be an integer, got 'two'"}},
        {std::string(kTrain) + "train:\n  steps: 1.5\n", {}, {"train.steps must be an integer, got '1.5'"}},
        {std::string(kTrain) + "model:\n  vocab_size: 99999999999\n", {}, {"model.vocab_size must be an integer"}},
        {std::string(kTrain) + "model:\n  qk_norm: yes\n", {}, {"model.qk_norm must be true or false, got 'yes'"}},
        {std::string(kTrain) + "optimizer:\n  lr: fast\n", {}, {"optimizer.lr must be a number, got 'fast'"}},
        {std::string(kTrain) + "model:\n  moe:\n    capacity_factor: lots\n", {},
         {"model.moe.capacity_factor must be a number or null, got 'lots'"}},
        {std::string(kTrain) + "run:\n  seed: -1\n", {}, {"run.seed must be a non-negative integer, got '-1'"}},
        {"data:\n  train:\n    glob: x\n", {}, {"data.train must be a string, got a mapping"}},
        {std::string(kTrain) + "run:\n  out_dir: [a, b]\n", {}, {"run.out_dir must be a string, got a sequence"}},
        {std::string(kTrain) + "model:\n  num_heads:\n    value: 4\n", {},
         {"model.num_heads must be an integer, got a mapping"}},
        {std::string(kTrain) + "model:\n  moe: 4\n", {}, {"model.moe must be a section", "got '4'"}},
        {"just words", {}, {"must be a mapping of sections", "model, data, train"}},
    });
}

TEST_CASE("values out of range are named with the allowed range", "[unit]") {
    require_errors({
        {std::string(kTrain) + "model:\n  vocab_size: 0\n", {}, {"model.vocab_size must be > 0, got 0"}},
        {std::string(kTrain) + "train:\n  micro_batch_size: -2\n", {}, {"train.micro_batch_size must be > 0, got -2"}},
        {kTrain, {"optimizer.decay_fraction=0"}, {"optimizer.decay_fraction must be in (0, 1], got 0"}},
        {kTrain, {"optimizer.decay_fraction=1.5"}, {"optimizer.decay_fraction must be in (0, 1], got 1.5"}},
        {std::string(kTrain) + "optimizer:\n  lr: -0.001\n", {}, {"optimizer.lr must be > 0, got -0.001"}},
        {std::string(kTrain) + "optimizer:\n  beta2: 1\n", {}, {"optimizer.beta2 must be in [0, 1), got 1"}},
        {std::string(kTrain) + "optimizer:\n  weight_decay: -0.1\n", {}, {"optimizer.weight_decay must be >= 0"}},
        {kTrain, {"model.moe.shared_experts=-1"}, {"model.moe.shared_experts must be >= 0, got -1"}},
        {kTrain, {"model.moe.shared_experts=1", "model.moe.shared_expert_hidden_size=-4"},
         {"model.moe.shared_expert_hidden_size must be >= 0, got -4"}},
        {kTrain, {"model.moe.shared_experts=1.5"}, {"model.moe.shared_experts must be an integer, got '1.5'"}},
        {std::string(kTrain) + "model:\n  dynamics:\n    init_alpha: 1.0\n", {},
         {"model.dynamics.init_alpha must be in (0, 1), got 1"}},
        {std::string(kTrain) + "model:\n  moe:\n    capacity_factor: 0\n", {},
         {"model.moe.capacity_factor must be > 0, got 0"}},
        {std::string(kTrain) + "eval:\n  batches: 0\n", {}, {"eval.batches must be >= 1, got 0"}},
        {std::string(kTrain) + "parallel:\n  expert_parallel: 0\n", {}, {"parallel.expert_parallel must be >= 1"}},
        {std::string(kTrain) + "run:\n  threads: -1\n", {}, {"run.threads must be in [0, 1024] (0: every core), got -1"}},
        {std::string(kTrain) + "run:\n  threads: 100000\n", {}, {"run.threads must be in [0, 1024]", "got 100000"}},
        {std::string(kTrain) + "optimizer:\n  lr: 1e-4\n  min_lr: 1e-3\n", {},
         {"optimizer.min_lr (0.001) must be <= optimizer.lr (0.0001)"}},
        {std::string(kTrain) + "optimizer:\n  warmup_steps: 11\ntrain:\n  steps: 10\n", {},
         {"optimizer.warmup_steps (11) must be <= train.steps (10)"}},
        {std::string(kTrain) + "model:\n  dynamics:\n    mu_min: 3\n", {},
         {"model.dynamics.mu_min (3) must be <= model.dynamics.mu_max (2)"}},
    });
}

TEST_CASE("numbers have one syntax, decimal: hex, infinity and NaN are refused", "[unit]") {
    require_errors({
        {std::string(kTrain) + "optimizer:\n  lr: 0x10\n", {}, {"optimizer.lr must be a number, got '0x10'"}},
        {kTrain, {"optimizer.lr=0x1p-4"}, {"--set 'optimizer.lr=0x1p-4'", "optimizer.lr must be a number"}},
        {std::string(kTrain) + "optimizer:\n  lr: .inf\n", {}, {"optimizer.lr must be a number, got '.inf'"}},
        {std::string(kTrain) + "optimizer:\n  lr: nan\n", {}, {"optimizer.lr must be a number, got 'nan'"}},
        {std::string(kTrain) + "optimizer:\n  lr: 1e\n", {}, {"optimizer.lr must be a number, got '1e'"}},
        {std::string(kTrain) + "optimizer:\n  lr: .\n", {}, {"optimizer.lr must be a number, got '.'"}},
        {std::string(kTrain) + "train:\n  steps: 0x10\n", {}, {"train.steps must be an integer, got '0x10'"}},
    });
    for (const char* text : {"0.5", ".5", "0.50", "+5e-1", "5E-1", "0.05e1", "50.e-2"}) {
        INFO(text);
        REQUIRE(moe::parse_config(std::string(kTrain) + "optimizer:\n  lr: " + text + "\n").optimizer.lr == 0.5);
    }
}

TEST_CASE("a config that is not a small regular file is refused before it is read", "[unit]") {
    const auto refused = [](const std::string& path) {
        try {
            moe::load_config(path);
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    // A FIFO would block the read forever; /dev/zero would fill memory.
    const std::string fifo = temp_path("config.fifo");
    std::remove(fifo.c_str());
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(refused(fifo) == "config: '" + fifo + "' is not a regular file: name a YAML config file");
    std::remove(fifo.c_str());
    CHECK(refused("/dev/zero") == "config: '/dev/zero' is not a regular file: name a YAML config file");
    CHECK(refused("/tmp") == "config: '/tmp' is not a regular file: name a YAML config file");
    const std::string big = temp_path("big.yaml");
    std::ofstream(big) << std::string((16 << 20) + 1, '#');
    CHECK(refused(big) == "config: '" + big + "' is 16777217 bytes: a config is a YAML file of at most 16 MiB");
    std::remove(big.c_str());
}

TEST_CASE("enums list their choices", "[unit]") {
    require_errors({
        {std::string(kTrain) + "run:\n  device: gpu\n", {}, {"run.device must be one of cpu, cuda, auto, got 'gpu'"}},
        {std::string(kTrain) + "run:\n  nan_policy: ignore\n", {}, {"run.nan_policy must be one of stop, skip"}},
        {std::string(kTrain) + "model:\n  moe:\n    router: hash\n", {},
         {"model.moe.router must be one of learned, token_id"}},
        {kTrain, {"optimizer.schedule=linear"}, {"optimizer.schedule must be one of cosine, constant, wsd, got 'linear'"}},
        {kTrain, {"model.moe.score=tanh"}, {"model.moe.score must be one of softmax, sigmoid, got 'tanh'"}},
        {kTrain, {"optimizer.decay_shape=exp"}, {"optimizer.decay_shape must be one of linear, sqrt, cosine, got 'exp'"}},
    });
}

TEST_CASE("inconsistent combinations name both keys and the fix", "[unit]") {
    require_errors({
        {std::string(kTrain) + "model:\n  hidden_size: 130\n", {},
         {"model.hidden_size (130) must be a multiple of model.num_heads (4)"}},
        {std::string(kTrain) + "model:\n  num_heads: 4\n  num_kv_heads: 3\n", {},
         {"model.num_heads (4) must be a multiple of model.num_kv_heads (3)"}},
        {std::string(kTrain) + "model:\n  hidden_size: 12\n", {},
         {"model.hidden_size / model.num_heads = 3", "must be even for RoPE"}},
        {std::string(kTrain) + "model:\n  moe:\n    num_experts: 2\n    top_k: 3\n", {},
         {"model.moe.top_k (3) must be <= model.moe.num_experts (2)"}},
        {std::string(kTrain) + "model:\n  moe:\n    router: token_id\n", {},
         {"model.moe.router token_id", "set model.moe.top_k to 1 (got 2)"}},
        {std::string(kTrain) + "parallel:\n  expert_parallel: 3\n", {},
         {"model.moe.num_experts (4) must be a multiple of parallel.expert_parallel (3): set "
          "parallel.expert_parallel to one of 1, 2, 4"}},
        {std::string(kTrain) + "train:\n  seq_len: 2147483647\n  micro_batch_size: 2\n", {},
         {"train.micro_batch_size x train.seq_len x model.moe.top_k (8589934588 token slots) must be below 2^31"}},
        {kTrain, {"model.moe.score=sigmoid", "model.moe.z_loss_weight=0.001"},
         {"model.moe.z_loss_weight (0.001) is the softmax's z-loss: with model.moe.score sigmoid set it to 0"}},
        {kTrain, {"model.moe.router=token_id", "model.moe.top_k=1", "model.moe.score=sigmoid"},
         {"model.moe.score and model.moe.groups apply to the learned router"}},
        {kTrain, {"model.moe.groups=3"},
         {"model.moe.groups (3) must divide model.moe.num_experts (4) and be at most 64"}},
        {kTrain, {"model.moe.group_limit=1"},
         {"model.moe.group_limit applies to group-limited routing: set model.moe.groups above 1"}},
        {kTrain, {"model.moe.groups=2", "model.moe.group_limit=3"},
         {"model.moe.group_limit (3) must be <= model.moe.groups (2)"}},
        {kTrain, {"model.moe.groups=4", "model.moe.group_limit=1"},
         {"model.moe.top_k (2) must be <= the experts of 1 group(s) (1): raise model.moe.group_limit or lower "
          "model.moe.top_k"}},
        {kTrain, {"model.moe.router=token_id", "model.moe.top_k=1", "model.moe.expert_bias_rate=0.001"},
         {"model.moe.expert_bias_rate applies to the learned router: set model.moe.router to learned, or remove "
          "expert_bias_rate"}},
        {kTrain, {"model.moe.router=token_id", "model.moe.top_k=1", "model.moe.balance_scope=global_batch"},
         {"model.moe.balance_scope applies to the learned router's balancing loss: set model.moe.router to learned, "
          "or leave balance_scope at micro_batch"}},
        {kTrain, {"model.moe.balance_scope=global"}, {"model.moe.balance_scope must be one of"}},
        {kTrain, {"model.moe.expert_bias_rate=-0.001"}, {"model.moe.expert_bias_rate must be >= 0, got -0.001"}},
        {kTrain, {"model.moe.expert_bias_rate=nan"}, {"model.moe.expert_bias_rate"}},
        {kTrain, {"model.moe.shared_expert_hidden_size=128"},
         {"model.moe.shared_expert_hidden_size applies to shared experts: set model.moe.shared_experts above 0, or "
          "shared_expert_hidden_size to 0"}},
        {kTrain, {"model.moe.shared_experts=2147483647"},
         {"model.moe.shared_experts x the shared expert hidden size (2147483647 x 256 = 549755813632) must be below "
          "2^31: lower model.moe.shared_experts or model.moe.shared_expert_hidden_size"}},
        {kTrain, {"model.moe.shared_experts=65536", "model.moe.shared_expert_hidden_size=32768"},
         {"(65536 x 32768 = 2147483648) must be below 2^31"}},
        {kTrain, {"optimizer.schedule=wsd", "optimizer.decay_fraction=0.95"},
         {"optimizer.warmup_steps (10) and the wsd decay (0.95 of train.steps: 95 steps) must fit in train.steps "
          "(100): lower optimizer.decay_fraction or optimizer.warmup_steps"}},
        {"model:\n  num_layers: 1\n", {}, {"set data.train to a glob of token shards (see README)"}},
        {"data:\n  train: \"\"\n", {}, {"set data.train to a glob of token shards (see README)"}},
        {kTrain, {"data.tokenizer="},
         {"data.tokenizer is empty: set it to bytes, the path of the SentencePiece model that made the shards, or "
          "none"}},
    });
}

TEST_CASE("bad --set overrides say they came from --set", "[unit]") {
    require_errors({
        {kTrain, {"model.qk_norm"}, {"--set 'model.qk_norm' is malformed", "key=value"}},
        {kTrain, {"=3"}, {"--set '=3' is malformed"}},
        {kTrain, {"model.hiden_size=64"},
         {"--set 'model.hiden_size=64'", "unknown key 'model.hiden_size'", "did you mean 'model.hidden_size'?"}},
        {kTrain, {"modle.moe.top_k=1"}, {"unknown section 'modle'", "did you mean 'model.moe.top_k'?"}},
        {kTrain, {"model.moe=3"}, {"'model.moe' is a section", "model.moe.num_experts"}},
        {kTrain, {"model.hidden_size.x=3"}, {"'model.hidden_size' takes a value"}},
        {kTrain, {"train.steps=many"}, {"--set 'train.steps=many'", "train.steps must be an integer, got 'many'"}},
        {kTrain, {"data.train=[a"}, {"--set 'data.train=[a'", "YAML syntax error", "quote a string value"}},
        {kTrain, {"model.qk_norm=on"}, {"--set 'model.qk_norm=on'", "model.qk_norm must be true or false"}},
    });
}

TEST_CASE("YAML syntax errors give the source, line and column", "[unit]") {
    require_errors({
        {"model:\n  hidden_size: [1, 2\n", {}, {"config: <text>: YAML syntax error at line", "column"}},
    });
    const std::string path = temp_path("broken.yaml");
    std::ofstream(path) << "train:\n  steps: 10\n bad indent: {\n";
    try {
        moe::load_config(path);
        FAIL("load_config accepted a broken file");
    } catch (const ConfigError& e) {
        const std::string message = e.what();
        INFO(message);
        CHECK(message.find("config: '" + path + "': YAML syntax error at line ") == 0);
        CHECK(message.find(", column ") != std::string::npos);
    }
    std::remove(path.c_str());
}

TEST_CASE("a missing file names the path and the reason", "[unit]") {
    const std::string path = temp_path("does_not_exist.yaml");
    try {
        moe::load_config(path);
        FAIL("load_config read a missing file");
    } catch (const ConfigError& e) {
        CHECK(std::string(e.what()) == "config: cannot read '" + path + "': No such file or directory");
    }
}
