// moe-generate: text from a checkpoint. Loads every expert into one CPU Model
// built from the checkpoint's own config, then samples one token at a time.
// The Model is planned for a fixed micro-batch, so each step runs a forward
// over one sequence of train.seq_len positions: the context, padded at the end.
// Attention is causal and the other layers act per position (capacity drops
// go in token order, so the padding behind the context loses slots first), so
// the logits at the context's last position do not see the padding.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "tools/tool_args.h"
#include "engine/io/tokenizer.h"
#include "engine/model/model.h"
#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "tools/checkpoint_reading.h"

using namespace moe;

namespace {

const char* kUsage =
    "usage: moe-generate DIR --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "  Samples N tokens (default 200) after the prompt from the weights of a checkpoint\n"
    "  (DIR: a checkpoint directory, or a run directory for its newest checkpoint).\n"
    "  The prompt is text, encoded with the checkpoint's tokenizer (bytes, or the SentencePiece model the run\n"
    "  named in data.tokenizer, read from that path), and the prompt and the sample are printed as text.\n"
    "  Tokenizer none (ids made elsewhere): the prompt is token ids separated by spaces, and ids are printed.\n"
    "  --temperature T (default 0.8): 0 takes the most likely token (greedy).\n"
    "  --top-k K (default 40): sample among the K most likely tokens; 0: among all.\n"
    "  --seed S (default 1): the same seed gives the same text.\n"
    "  Runs on the CPU, one process; contexts longer than the model's train.seq_len keep their last tokens.\n";

constexpr const char* kProgram = "moe-generate";

[[noreturn]] void fail(const std::string& msg) { exit_with_error(kProgram, msg); }

struct Args {
    std::string dir, prompt;
    bool has_prompt = false;
    long tokens = 200, top_k = 40;
    double temperature = 0.8;
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
            a.top_k = args.integer(0);
        } else if (arg == "--seed") {
            a.seed = static_cast<unsigned long long>(args.integer(0));
        } else if (arg == "--temperature") {
            a.temperature = args.number(0);
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

// The next token from one row of logits: the most likely one at temperature 0
// (the lowest id on a tie), else a draw from softmax(logits / temperature)
// over the top_k most likely (0: all).
int32_t sample(const std::vector<float>& logits, double temperature, size_t top_k, Rng& rng) {
    std::vector<int32_t> ids(logits.size());
    std::iota(ids.begin(), ids.end(), 0);
    const auto more_likely = [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    if (temperature == 0) return *std::min_element(ids.begin(), ids.end(), more_likely);
    if (top_k > 0 && top_k < ids.size()) {
        std::partial_sort(ids.begin(), ids.begin() + top_k, ids.end(), more_likely);
        ids.resize(top_k);
    }
    double top = -INFINITY, total = 0;
    for (int32_t id : ids) top = std::max(top, double(logits[id]));
    std::vector<double> weight(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) total += weight[i] = std::exp((logits[ids[i]] - top) / temperature);
    double u = rng.uniform() * total;
    for (size_t i = 0; i < ids.size(); ++i)
        if ((u -= weight[i]) < 0) return ids[i];
    return ids.back();  // rounding left u at the very end
}

void print_text(const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);  // the text appears as it is made
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
        std::vector<int32_t> context = prompt_tokens(a.prompt, *tokenizer, V);

        CpuOps ops;
        Model model(mc, ops, DType::F32, 1, T);  // no EP group: every expert in this process
        load_checkpoint(info, info.config, model.params());  // checks the checksums of the files it reads

        TextStream text(*tokenizer);
        for (int32_t id : context) print_text(text.next(id));
        Rng rng(a.seed);
        std::vector<int32_t> window(T);
        std::vector<float> logits(V);
        for (long n = 0; n < a.tokens; ++n) {
            const size_t used = std::min(context.size(), size_t(T));
            std::fill(window.begin(), window.end(), 0);
            std::copy(context.end() - used, context.end(), window.begin());
            model.forward(window.data(), window.data());  // targets: any valid ids, the loss goes unused
            ops.copy_to_host(logits.data(), model.logits().rows(used - 1, used));
            context.push_back(sample(logits, a.temperature, size_t(a.top_k), rng));
            print_text(text.next(context.back()));
        }
        print_text(text.finish());
        const bool ids = tokenizer->identity().kind == "none";
        if (ids || isatty(STDOUT_FILENO)) std::fputc('\n', stdout);  // piped text stays exactly the text
    } catch (const std::exception& e) {
        fail(e.what());
    }
    return 0;
}
