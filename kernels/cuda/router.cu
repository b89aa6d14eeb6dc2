// The learned router on the GPU, the math of kernels/cpu/router.cpp in fp32:
// one warp per token for the scores (softmax or sigmoid), the choice of groups
// and experts and the backward, so every row reduction is the same shuffle
// tree on every run. router_stats sums fixed row ranges per block in double,
// then the blocks in order.
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace moe {

namespace {

using cuda::require_dtype;

constexpr int kWarps = 8;  // tokens per block of the per-token kernels
constexpr int kThreads = 32 * kWarps;
constexpr unsigned kFullMask = 0xffffffffu;

// probs [N,E], lse [N], topk_idx and topk_w [N,k] with 1 <= k <= E.
void check_router(const char* op, const Tensor& probs, const Tensor& lse, const Tensor& topk_idx,
                  const Tensor& topk_w) {
    require_dtype(op, "probs", probs, DType::F32);
    require_dtype(op, "lse", lse, DType::F32);
    require_dtype(op, "topk_idx", topk_idx, DType::I32);
    require_dtype(op, "topk_w", topk_w, DType::F32);
    const int64_t N = probs.dim(0), E = probs.dim(1), k = topk_idx.dim(1);
    check(probs.ndim == 2 && lse.numel() == N && topk_idx.ndim == 2 && topk_idx.dim(0) == N && topk_w.ndim == 2 &&
              topk_w.dim(0) == N && topk_w.dim(1) == k && k >= 1 && k <= E && E <= INT_MAX,
          op,
          "expected probs [N,E], lse [N], topk_idx and topk_w [N,k] with 1 <= k <= E; got probs " +
              probs.shape_str() + ", lse " + lse.shape_str() + ", topk_idx " + topk_idx.shape_str() + ", topk_w " +
              topk_w.shape_str());
}

// The top-k order of the CPU: an expert of the token's groups first, then the
// larger key (score + bias; NaN lowest, so a NaN row still names k distinct
// experts), then the lower expert index.
__device__ __forceinline__ float rank_key(float p) { return isnan(p) ? -INFINITY : p; }
__device__ __forceinline__ bool ranks_before(bool allowed_a, float key_a, int a, bool allowed_b, float key_b, int b) {
    if (allowed_a != allowed_b) return allowed_a;
    return key_a > key_b || (key_a == key_b && a < b);
}

// The most groups a token's choice handles: a bit each in a 64-bit mask.
constexpr int kMaxGroups = 64;

struct Choice {
    const float* bias;  // [E] or null
    int groups, group_limit;
};

__device__ __forceinline__ float choice_key(const float* p, const Choice& ch, int e) {
    return rank_key(ch.bias ? p[e] + ch.bias[e] : p[e]);
}

// The token's groups as a mask: the group_limit groups whose two largest keys
// sum highest, ties to the lower group; every group when there is one.
__device__ uint64_t choose_groups(const float* p, const Choice& ch, int E) {
    if (ch.groups == 1) return 1;
    const int lane = threadIdx.x & 31, size = E / ch.groups;
    float score[kMaxGroups / 32];  // this lane's groups: lane, lane + 32
    for (int i = 0; i < kMaxGroups / 32; ++i) {
        const int g = lane + 32 * i;
        float first = -INFINITY, second = -INFINITY;
        if (g < ch.groups)
            for (int e = g * size; e < (g + 1) * size; ++e) {
                const float key = choice_key(p, ch, e);
                if (key > first) second = first, first = key;
                else if (key > second) second = key;
            }
        score[i] = size > 1 ? first + second : first;
    }
    uint64_t mask = 0;
    for (int round = 0; round < ch.group_limit; ++round) {
        int best = INT_MAX;
        float best_score = -INFINITY;
        for (int i = 0; i < kMaxGroups / 32; ++i) {
            const int g = lane + 32 * i;
            if (g >= ch.groups || (mask >> g & 1)) continue;
            if (best == INT_MAX || score[i] > best_score || (score[i] == best_score && g < best))
                best = g, best_score = score[i];
        }
        for (int o = 16; o > 0; o >>= 1) {
            const int other = __shfl_xor_sync(kFullMask, best, o);
            const float other_score = __shfl_xor_sync(kFullMask, best_score, o);
            if (other != INT_MAX && (best == INT_MAX || other_score > best_score ||
                                     (other_score == best_score && other < best)))
                best = other, best_score = other_score;
        }
        mask |= uint64_t(1) << best;
    }
    return mask;
}

__global__ void router_forward_kernel(float* probs, float* lse, int32_t* topk_idx, float* topk_w,
                                      const float* logits, int64_t N, int E, int k, bool normalize, bool sigmoid,
                                      Choice ch) {
    const int lane = threadIdx.x & 31;
    const int group_size = E / ch.groups;
    for (int64_t n = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); n < N; n += int64_t(gridDim.x) * kWarps) {
        const float* x = logits + n * E;
        float* p = probs + n * E;
        if (sigmoid) {
            float sum = 0;
            for (int e = lane; e < E; e += 32) {
                p[e] = 1 / (1 + expf(-x[e]));
                sum += p[e];
            }
            sum = cuda::warp_sum(sum);
            if (lane == 0) lse[n] = logf(sum);  // what the scores are normalised by
        } else {
            float m = -INFINITY;
            for (int e = lane; e < E; e += 32) m = fmaxf(m, x[e]);
            m = cuda::warp_max(m);
            float s = 0;
            for (int e = lane; e < E; e += 32) s += expf(x[e] - m);
            const float l = m + logf(cuda::warp_sum(s));
            if (lane == 0) lse[n] = l;
            for (int e = lane; e < E; e += 32) p[e] = expf(x[e] - l);
        }
        __syncwarp();  // the groups read every lane's scores
        const uint64_t groups = choose_groups(p, ch, E);

        // k rounds of a warp argmax. The order is strict, so the experts not
        // picked yet are those ranking after the previous pick.
        int prev = -1;
        bool prev_allowed = true;
        float prev_key = 0, chosen = 0;
        for (int j = 0; j < k; ++j) {
            int best = INT_MAX;  // ranks after every expert
            bool best_allowed = false;
            float best_key = -INFINITY, best_p = 0;
            for (int e = lane; e < E; e += 32) {
                const float pe = p[e], key = choice_key(p, ch, e);
                const bool allowed = groups >> (e / group_size) & 1;
                if (prev >= 0 && !ranks_before(prev_allowed, prev_key, prev, allowed, key, e)) continue;
                if (best == INT_MAX || ranks_before(allowed, key, e, best_allowed, best_key, best))
                    best = e, best_allowed = allowed, best_key = key, best_p = pe;
            }
            for (int o = 16; o > 0; o >>= 1) {
                const int other = __shfl_xor_sync(kFullMask, best, o);
                const bool other_allowed = __shfl_xor_sync(kFullMask, int(best_allowed), o);
                const float other_key = __shfl_xor_sync(kFullMask, best_key, o);
                const float other_p = __shfl_xor_sync(kFullMask, best_p, o);
                if (other != INT_MAX &&
                    (best == INT_MAX || ranks_before(other_allowed, other_key, other, best_allowed, best_key, best)))
                    best = other, best_allowed = other_allowed, best_key = other_key, best_p = other_p;
            }
            if (lane == 0) {
                topk_idx[n * k + j] = best;
                topk_w[n * k + j] = best_p;
            }
            chosen += best_p;
            prev = best;
            prev_allowed = best_allowed;
            prev_key = best_key;
        }
        if (lane == 0 && normalize)
            for (int j = 0; j < k; ++j) topk_w[n * k + j] /= chosen;
    }
}

// dlogits += the gradient through the scores of ds_e = the balancing term +
// the top-k term, plus the z-loss term 2 z lse p_e for softmax
// (kernels/cpu/router.cpp).
__global__ void router_backward_kernel(float* dlogits, const float* dtopk_w, const float* probs, const float* lse,
                                       const int32_t* topk_idx, const double* aux_coef, int64_t N, int E, int k,
                                       bool normalize, bool sigmoid, float z_coef) {
    const int lane = threadIdx.x & 31;
    for (int64_t n = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); n < N; n += int64_t(gridDim.x) * kWarps) {
        const float* p = probs + n * E;
        const int32_t* idx = topk_idx + n * k;
        const float* c = dtopk_w ? dtopk_w + n * k : nullptr;
        float* g = dlogits + n * E;

        // dL/ds of the j-th pick: c_j raw, or (c_j - sum_i c_i w_i) / S
        // through w_j = s_j / S, S = sum_i s_i. k is small: every lane
        // computes these sums itself, in the same order.
        float S = 0, cw = 0;
        if (c) {
            for (int j = 0; j < k; ++j) S += p[idx[j]];
            for (int j = 0; j < k; ++j) cw += c[j] * (p[idx[j]] / S);
        }
        auto topk_dp = [&](int j) { return normalize ? (c[j] - cw) / S : c[j]; };

        if (sigmoid) {
            // q = s / R: d(sum a q)/ds_f = (a_f - sum_e a_e q_e) / R; dlogit = s (1 - s) dL/ds.
            float R = 0;
            for (int e = lane; e < E; e += 32) R += p[e];
            R = cuda::warp_sum(R);
            float aq = 0;
            for (int e = lane; e < E; e += 32) aq += float(aux_coef[e]) * (p[e] / R);
            aq = cuda::warp_sum(aq);
            for (int e = lane; e < E; e += 32) g[e] += p[e] * (1 - p[e]) * ((float(aux_coef[e]) - aq) / R);
            if (c) {
                __syncwarp();  // the picked experts' entries were just written by other lanes
                for (int j = lane; j < k; j += 32) g[idx[j]] += p[idx[j]] * (1 - p[idx[j]]) * topk_dp(j);
            }
            continue;
        }
        float p_dot_dp = 0;
        for (int e = lane; e < E; e += 32) p_dot_dp += p[e] * float(aux_coef[e]);
        p_dot_dp = cuda::warp_sum(p_dot_dp);
        if (c)
            for (int j = 0; j < k; ++j) p_dot_dp += p[idx[j]] * topk_dp(j);
        const float z_term = 2 * z_coef * lse[n];
        for (int e = lane; e < E; e += 32) g[e] += p[e] * (float(aux_coef[e]) - p_dot_dp + z_term);
        if (c) {
            __syncwarp();  // the picked experts' entries were just written by other lanes
            for (int j = lane; j < k; j += 32) g[idx[j]] += p[idx[j]] * topk_dp(j);
        }
    }
}

// The fewest rows a block of router_stats takes.
constexpr int64_t kStatRows = 256;

// Block b writes partials[b*(E+1) + e] = sum of q[:, e] (probs, or for
// sigmoid probs / exp(lse)) and partials[b*(E+1) + E] = sum of lse^2 over its
// rows [N b/B, N (b+1)/B).
__global__ void router_stats_kernel(double* partials, const float* probs, const float* lse, int64_t N, int E,
                                    bool sigmoid) {
    __shared__ double part[kThreads];
    __shared__ double red[32];
    const int t = threadIdx.x;
    const int64_t r0 = N * blockIdx.x / gridDim.x, r1 = N * (blockIdx.x + 1) / gridDim.x;
    double* out = partials + int64_t(blockIdx.x) * (E + 1);
    // Columns in passes of `width`; when E < blockDim, `groups` threads share
    // a column, each taking every groups-th row, and are added in group order.
    const int width = min(E, int(blockDim.x)), groups = blockDim.x / width;
    for (int c0 = 0; c0 < E; c0 += width) {
        const int g = t / width, c = c0 + t % width;
        double acc = 0;
        if (g < groups && c < E)
            for (int64_t r = r0 + g; r < r1; r += groups)
                acc += sigmoid ? probs[r * E + c] * exp(-double(lse[r])) : double(probs[r * E + c]);
        part[t] = acc;
        __syncthreads();
        if (t < width && c < E) {
            double sum = 0;
            for (int i = 0; i < groups; ++i) sum += part[i * width + t];
            out[c] = sum;
        }
        __syncthreads();
    }
    double sq = 0;
    for (int64_t r = r0 + t; r < r1; r += blockDim.x) sq += double(lse[r]) * lse[r];
    sq = cuda::block_sum(sq, red);
    if (t == 0) out[E] = sq;
}

// stats[c] = sum over blocks, in block order, of partials[b * columns + c].
__global__ void stats_finish_kernel(double* stats, const double* partials, int64_t blocks, int64_t columns) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c >= columns) return;
    double sum = 0;
    for (int64_t b = 0; b < blocks; ++b) sum += partials[b * columns + c];
    stats[c] = sum;
}

}  // namespace

namespace {

// The scoring's bias and groups as the kernels take them.
Choice choice_of(const char* op, const RouterScoring& sc, int64_t E, int64_t k) {
    if (!sc.bias.empty()) {
        require_dtype(op, "bias", sc.bias, DType::F32);
        check(sc.bias.numel() == E, op, "bias " + sc.bias.shape_str() + " must have one entry per expert");
    }
    check(sc.groups >= 1 && sc.groups <= kMaxGroups && E % sc.groups == 0 && sc.group_limit >= 1 &&
              sc.group_limit <= sc.groups && k <= sc.group_limit * (E / sc.groups),
          op,
          std::to_string(sc.groups) + " groups with a limit of " + std::to_string(sc.group_limit) +
              " cannot hold top-" + std::to_string(k) + " of " + std::to_string(E) + " experts (at most " +
              std::to_string(kMaxGroups) + " groups)");
    return {sc.bias.empty() ? nullptr : sc.bias.ptr<float>(), sc.groups, sc.group_limit};
}

}  // namespace

void CudaOps::router_forward(Tensor probs, Tensor lse, Tensor topk_idx, Tensor topk_w, Tensor logits,
                             const RouterScoring& scoring) {
    const char* op = "router_forward";
    check_router(op, probs, lse, topk_idx, topk_w);
    require_dtype(op, "logits", logits, DType::F32);
    check(logits.ndim == 2 && logits.dim(0) == probs.dim(0) && logits.dim(1) == probs.dim(1), op,
          "logits " + logits.shape_str() + " and probs " + probs.shape_str() + " must have the same shape [N,E]");
    const int64_t N = probs.dim(0);
    const Choice ch = choice_of(op, scoring, probs.dim(1), topk_idx.dim(1));
    if (N == 0) return;
    router_forward_kernel<<<cuda::blocks_for(N, kWarps), kThreads, 0, stream()>>>(
        probs.ptr<float>(), lse.ptr<float>(), topk_idx.ptr<int32_t>(), topk_w.ptr<float>(), logits.ptr<float>(), N,
        int(probs.dim(1)), int(topk_idx.dim(1)), scoring.normalize, scoring.sigmoid, ch);
    MOE_CUDA_LAUNCHED();
}

void CudaOps::router_backward(Tensor dlogits, Tensor dtopk_w, Tensor probs, Tensor lse, Tensor topk_idx,
                              Tensor topk_w, const RouterScoring& scoring, const std::vector<double>& aux_coef,
                              double z_coef) {
    const char* op = "router_backward";
    check_router(op, probs, lse, topk_idx, topk_w);
    require_dtype(op, "dlogits", dlogits, DType::F32);
    require_dtype(op, "dtopk_w", dtopk_w, DType::F32);
    if (dlogits.empty()) return;
    const int64_t N = probs.dim(0), E = probs.dim(1), k = topk_idx.dim(1);
    check(dlogits.numel() == N * E && (dtopk_w.empty() || dtopk_w.numel() == N * k), op,
          "dlogits " + dlogits.shape_str() + " must have the shape of probs " + probs.shape_str() +
              ", and dtopk_w " + dtopk_w.shape_str() + " that of topk_w " + topk_w.shape_str());
    check(int64_t(aux_coef.size()) == E && E * sizeof(double) <= kUploadBytes, op,
          "aux_coef has " + std::to_string(aux_coef.size()) + " entries; one per expert (" + std::to_string(E) +
              ") expected, at most " + std::to_string(kUploadBytes / sizeof(double)));
    check(!scoring.sigmoid || z_coef == 0, op, "the z-loss is defined for softmax scores only");
    if (N == 0) return;
    auto* coef = static_cast<double*>(upload_area());
    copy_from_host(Tensor(coef, DType::F64, {E}), aux_coef.data());
    router_backward_kernel<<<cuda::blocks_for(N, kWarps), kThreads, 0, stream()>>>(
        dlogits.ptr<float>(), dtopk_w.empty() ? nullptr : dtopk_w.ptr<float>(), probs.ptr<float>(),
        lse.ptr<float>(), topk_idx.ptr<int32_t>(), coef, N, int(E), int(k), scoring.normalize, scoring.sigmoid,
        float(z_coef));
    MOE_CUDA_LAUNCHED();
}

void CudaOps::router_stats(Tensor stats, Tensor probs, Tensor lse, const RouterScoring& scoring) {
    const char* op = "router_stats";
    require_dtype(op, "stats", stats, DType::F64);
    require_dtype(op, "probs", probs, DType::F32);
    require_dtype(op, "lse", lse, DType::F32);
    const int64_t N = probs.dim(0), E = probs.dim(1);
    check(probs.ndim == 2 && lse.numel() == N && stats.numel() == E + 1 && E >= 1 && E < kMaxPartials, op,
          "expected stats [E+1], probs [N,E] with 1 <= E < " + std::to_string(kMaxPartials) + " and lse [N]; got " +
              stats.shape_str() + ", " + probs.shape_str() + " and " + lse.shape_str());
    // The block count depends only on N and E, so the summation order does too.
    const int64_t blocks =
        std::max<int64_t>(1, std::min<int64_t>(kMaxPartials / (E + 1), (N + kStatRows - 1) / kStatRows));
    router_stats_kernel<<<unsigned(blocks), kThreads, 0, stream()>>>(partials(), probs.ptr<float>(),
                                                                      lse.ptr<float>(), N, int(E), scoring.sigmoid);
    MOE_CUDA_LAUNCHED();
    stats_finish_kernel<<<cuda::blocks_for(E + 1, kThreads), kThreads, 0, stream()>>>(stats.ptr<double>(),
                                                                                        partials(), blocks, E + 1);
    MOE_CUDA_LAUNCHED();
}

}  // namespace moe
