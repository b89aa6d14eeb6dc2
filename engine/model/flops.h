// Model FLOPs per trained token (MODEL.md "FLOPs counted for MFU"): 3 * F, and MFU.
#pragma once
#include "engine/config/config.h"

namespace moe {

inline double forward_flops_per_token(const ModelConfig& m, int seq_len) {
    const double H = m.hidden_size, hd = m.head_dim(), nh = m.num_heads, nkv = m.num_kv_heads;
    const double k = m.moe.top_k, I = m.moe.expert_hidden_size, E = m.moe.num_experts;
    const double C = m.dynamics.controller_size, V = m.vocab_size, L = m.num_layers, T = seq_len;
    // Attention projections, the k routed experts and the shared experts
    // (docs/MODEL-OPTIONS.md "Shared experts": n of inner size I_s, one fused SwiGLU).
    double per_layer = H * (nh + 2 * nkv) * hd + nh * hd * H + k * 3 * H * I + 3 * H * double(m.moe.shared_inner());
    if (m.moe.router == RouterKind::learned) per_layer += H * E;
    if (m.dynamics.enabled) per_layer += 2 * H * C + C * 3 * H;
    return 2 * L * per_layer + 2 * H * V + 2 * L * T * H;
}

inline double train_flops_per_token(const ModelConfig& m, int seq_len) { return 3 * forward_flops_per_token(m, seq_len); }

// MFU's denominator: one H100/H200 SXM GPU's dense bf16 peak, TFLOP/s.
constexpr double kGpuPeakTflops = 989.4;

// The share of `gpus` GPUs' peak that training at tokens_per_s uses.
inline double model_flops_utilization(const ModelConfig& m, int seq_len, double tokens_per_s, int gpus) {
    return train_flops_per_token(m, seq_len) * tokens_per_s / (gpus * kGpuPeakTflops * 1e12);
}

}  // namespace moe
