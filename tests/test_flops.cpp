// The FLOP count behind tokens/s -> TFLOP/s and MFU (MODEL.md "FLOPs counted
// for MFU"), term by term on the benchmark configs, and the MFU of the
// issue's PyTorch figures.
#include "engine/config/config.h"
#include "engine/model/flops.h"
#include "tests/catch.h"

using namespace moe;

TEST_CASE("the FLOP count is MODEL.md's, term by term, on the benchmark configs", "[unit]") {
    const Config medium = load_config(std::string(MOE_SOURCE_DIR) + "/configs/bench/medium.yaml");
    const Config tr = load_config(std::string(MOE_SOURCE_DIR) + "/configs/bench/medium-tr.yaml");
    // H 1024, 16 heads of 64 over 4 kv heads, L 12, T 2048, V 32768, I 2816,
    // 8 experts, controller 64.
    const double projections = 1024.0 * (16 + 2 * 4) * 64 + 16 * 64 * 1024;
    const double dynamics = 2 * 1024 * 64 + 64 * 3 * 1024;
    const double head = 2.0 * 1024 * 32768, scores = 2.0 * 12 * 2048 * 1024;
    const double learned_top2 = 2 * 12 * (projections + 2 * 3 * 1024 * 2816 + 1024 * 8 + dynamics) + head + scores;
    const double token_id_top1 = 2 * 12 * (projections + 1 * 3 * 1024 * 2816 + dynamics) + head + scores;
    CHECK(forward_flops_per_token(medium.model, 2048) == learned_top2);
    CHECK(train_flops_per_token(medium.model, 2048) == 3 * learned_top2);
    CHECK(forward_flops_per_token(tr.model, 2048) == token_id_top1);
    // Without dynamics the controller's term goes.
    Config off = medium;
    off.model.dynamics.enabled = false;
    CHECK(forward_flops_per_token(off.model, 2048) == learned_top2 - 2 * 12 * dynamics);
    // Longer sequences add only to the attention scores.
    CHECK(forward_flops_per_token(medium.model, 4096) == learned_top2 + scores);
    // Shared experts (docs/MODEL-OPTIONS.md): 2 L n 3 H I_s more, I_s by
    // default the routed experts' inner size.
    Config shared = medium;
    shared.model.moe.shared_experts = 2;
    CHECK(forward_flops_per_token(shared.model, 2048) == learned_top2 + 2 * 12 * 2 * 3 * 1024.0 * 2816);
    shared.model.moe.shared_expert_hidden_size = 1408;
    CHECK(forward_flops_per_token(shared.model, 2048) == learned_top2 + 2 * 12 * 2 * 3 * 1024.0 * 1408);
}

TEST_CASE("MFU is model FLOP/s over 989.4 TFLOP/s a GPU: PyTorch's compiled medium run is 22%", "[unit]") {
    const Config medium = load_config(std::string(MOE_SOURCE_DIR) + "/configs/bench/medium.yaml");
    // The figure for torch.compile on one H100: 121.6k tokens/s, 22% MFU.
    const double mfu = model_flops_utilization(medium.model, 2048, 121.6e3, 1);
    CHECK(mfu == Approx(train_flops_per_token(medium.model, 2048) * 121.6e3 / 989.4e12));
    CHECK(mfu == Approx(0.2226).margin(0.0005));
    // Eight GPUs at eight times the speed: the same utilization.
    CHECK(model_flops_utilization(medium.model, 2048, 8 * 121.6e3, 8) == Approx(mfu));
}
