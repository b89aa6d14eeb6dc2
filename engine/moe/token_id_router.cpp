#include "engine/moe/token_id_router.h"

namespace moe {

void TokenIdRouter::carve(Arena& acts, Arena&, const Precision& pr, int64_t N, Tensor) {
    weights_ = acts.take(pr.stat, {N, top_k_});
    experts_.resize(size_t(N));
}

RouterChoice TokenIdRouter::forward(Ops& ops, Tensor x, const int32_t* ids) {
    const int64_t N = x.dim(0);
    const Tensor weights = weights_.rows(0, N);
    experts_.resize(size_t(N));  // within the capacity carved: no allocation
    for (int64_t t = 0; t < N; ++t) experts_[size_t(t)] = ids[t] % num_experts_;
    // Written every time: with recomputation its memory is shared by the layers.
    if (weights.dtype == DType::F64) {
        std::vector<double> ones(size_t(N), 1.0);
        ops.copy_from_host(weights, ones.data());
    } else {
        std::vector<float> ones(size_t(N), 1.0f);
        ops.copy_from_host(weights, ones.data());
    }
    return {Tensor{}, &experts_, weights};
}

}  // namespace moe
