// moe-generate: text from a checkpoint. Loads every expert into one Decoder
// (engine/model/decoder.h) built from the checkpoint's own config, on the CPU
// or a GPU, prefills the prompt, then samples one token at a time: each new
// token costs one position's work per layer over the KV cache, not a forward
// over the whole context. Tokens/s of the generation (the prompt's prefill
// apart) go to stderr at the end.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/generate/generator.h"
#include "engine/io/checkpoint.h"
#include "engine/io/tokenizer.h"
#include "engine/model/decoder.h"
#include "engine/run/backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "tools/checkpoint_reading.h"
#include "tools/tool_args.h"

using namespace moe;

namespace {

const char* kUsage =
    "usage: moe-generate DIR --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "                    [--device cpu|cuda|auto]\n"
    "  Samples N tokens (default 200) after the prompt from the weights of a checkpoint\n"
    "  (DIR: a checkpoint directory, or a run directory for its newest checkpoint).\n"
    "  The prompt is text, encoded with the checkpoint's tokenizer (bytes, or the SentencePiece model the run\n"
    "  named in data.tokenizer, read from that path), and the prompt and the sample are printed as text.\n"
    "  Tokenizer none (ids made elsewhere): the prompt is token ids separated by spaces, and ids are printed.\n"
    "  --temperature T (default 0.8): 0 takes the most likely token (greedy).\n"
    "  --top-k K (default 40): sample among the K most likely tokens; 0: among all.\n"
    "  --top-p P (default 1): then among the fewest most likely whose probability reaches P, in (0, 1].\n"
    "  --seed S (default 1): the same seed gives the same text.\n"
    "  --device (default auto): the GPU when this build has CUDA and one is visible, else the CPU.\n"
    "  Keeps a KV cache of the model's train.seq_len positions: a longer prompt keeps its last train.seq_len\n"
    "  tokens, and a full cache restarts from the last half of the text. Prints the prefill's and the\n"
    "  generation's tokens/s to stderr at the end.\n";

constexpr const char* kProgram = "moe-generate";
constexpr int kPrefillRows = 256;  // positions a prefill computes at once

[[noreturn]] void fail(const std::string& msg) { exit_with_error(kProgram, msg); }

struct Args {
    std::string dir, prompt, device = "auto";
    bool has_prompt = false;
    long tokens = 200;
    SamplingOptions sampling;
    unsigned long long seed = 1;
};

Args parse(int argc, char** argv) {
    Args a;
    ToolArgs args(kProgram, kUsage, argc, argv);
    while (args.next()) {
        const std::string& arg = args.arg();
        if (arg == "--prompt") {
            a.prompt = args.value();
            a.has_prompt = true;
        } else if (arg == "--tokens") {
            a.tokens = args.integer(0);
        } else if (arg == "--top-k") {
            a.sampling.top_k = args.integer(0);
        } else if (arg == "--top-p") {
            a.sampling.top_p = args.number(0, false, 1);
        } else if (arg == "--seed") {
            a.seed = static_cast<unsigned long long>(args.integer(0));
        } else if (arg == "--temperature") {
            a.sampling.temperature = args.number(0);
        } else if (arg == "--device") {
            a.device = args.value();
            if (a.device != "cpu" && a.device != "cuda" && a.device != "auto")
                args.fail("--device takes cpu, cuda or auto, got '" + a.device + "'");
        } else if (arg.rfind("-", 0) == 0 || !a.dir.empty()) {
            args.fail_with_usage("unexpected argument '" + arg + "'");
        } else {
            a.dir = arg;
        }
    }
    if (a.dir.empty()) args.fail_with_usage("a checkpoint or run directory is required");
    if (!a.has_prompt) args.fail_with_usage("--prompt TEXT is required");
    return a;
}

// The prompt as token ids, encoded with the checkpoint's tokenizer (none:
// the ids it lists).
std::vector<int32_t> prompt_tokens(const std::string& prompt, const Tokenizer& tokenizer, int vocab) {
    const std::vector<int32_t> ids = tokenizer.encode(prompt);
    for (int32_t id : ids)
        if (id >= vocab)
            fail("the prompt's token " + std::to_string(id) + " lies outside the model's vocabulary: give token ids "
                 "in [0, " + std::to_string(vocab) + ")");
    if (ids.empty()) fail("the prompt is empty: give at least one token to continue");
    return ids;
}

void print_text(const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);  // the text appears as it is made
}

// The backend --device names: auto takes the GPU when there is one.
std::unique_ptr<Ops> open_device(const std::string& device) {
    const bool gpu_visible = gpu_memory().has_value();
    if (device == "cpu" || (device == "auto" && !gpu_visible)) return std::make_unique<CpuOps>();
    if (!cuda_backend_built())
        fail("--device cuda: this build has no CUDA backend (rebuild where cmake finds a CUDA toolkit, "
             "-DMOE_CUDA=ON), or use --device cpu");
    if (!gpu_visible)
        fail("--device cuda: no GPU is visible to this process (check the driver with nvidia-smi and "
             "CUDA_VISIBLE_DEVICES), or use --device cpu");
    RunConfig run;
    run.device = "cuda";
    return make_backend(run, nullptr);
}

// Tokens/s of the prefill and of the generation, on stderr (stdout is the text).
void report(const GenerationStats& s, const std::string& device) {
    const auto rate = [](double n, double seconds) { return seconds > 0 ? n / seconds : 0.0; };
    std::fflush(stdout);
    std::fprintf(stderr, "%s: %s: prompt of %lld tokens prefilled in %.3f s (%.1f tokens/s); %lld tokens generated in "
                         "%.3f s (%.1f tokens/s",
                 kProgram, device.c_str(), (long long)s.prompt_tokens, s.prefill_seconds,
                 rate(double(s.prompt_tokens), s.prefill_seconds), (long long)s.generated, s.generate_seconds,
                 rate(double(s.generated), s.generate_seconds));
    if (s.slides > 0)
        std::fprintf(stderr, "; cache restarts: %lld (%lld positions prefilled again)", (long long)s.slides,
                     (long long)s.reprefilled);
    std::fprintf(stderr, ")\n");
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    try {
        const CheckpointInfo info = open_checkpoint(a.dir);
        const ModelConfig& mc = info.config.model;
        const int T = info.config.train.seq_len, V = mc.vocab_size;
        const std::unique_ptr<Tokenizer> tokenizer =
            load_recorded_tokenizer(info.progress.tokenizer, info.config.data.tokenizer);
        const std::vector<int32_t> prompt = prompt_tokens(a.prompt, *tokenizer, V);

        const std::unique_ptr<Ops> ops = open_device(a.device);
        Decoder decoder(mc, *ops, T, std::min(T, kPrefillRows));  // every expert in this process
        load_checkpoint_weights(info, info.config, decoder.params());  // checks the checksums of the files it reads
        decoder.params().refresh_work();

        TextStream text(*tokenizer);
        for (int32_t id : prompt) print_text(text.next(id));
        Generator generator(decoder, a.sampling, a.seed);
        const GenerationStats stats =
            generator.run(prompt, a.tokens, [&](int32_t id) { print_text(text.next(id)); });
        print_text(text.finish());
        const bool ids = tokenizer->identity().kind == "none";
        if (ids || isatty(STDOUT_FILENO)) std::fputc('\n', stdout);  // piped text stays exactly the text
        report(stats, ops->device_name());
    } catch (const std::exception& e) {
        fail(e.what());
    }
    return 0;
}
