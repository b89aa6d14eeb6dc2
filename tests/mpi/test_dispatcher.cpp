// The expert-parallel token dispatcher on its own, over every rank of the
// world as one EP group: a token crosses to a rank once, however many of its
// experts live there, and one combined row per (token, rank) comes back.
// Experts that scale their rows by (global expert + 1) make every output
// known in closed form: y, the weights' gradient and dx are checked against
// it, with and without group-limited choices and capacity drops, routing
// planned on the backend and on the host; and the all-to-all bytes against
// the count of distinct (token, remote rank) pairs, computed here from every
// rank's choice.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/process_groups.h"
#include "engine/moe/token_dispatcher.h"
#include "engine/params/arena.h"
#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/routing_plan.h"
#include "tests/catch.h"
#include "tests/host_values.h"

using namespace moe;
using moe::test::host_values;
using moe::test::upload_values;

namespace {

constexpr int kTokens = 24, kHidden = 16, kExperts = 16, kTopK = 3;

// Rank q's choice: each token's k distinct experts, all from one group of E/P
// consecutive experts (one rank's: group-limited, group_limit 1) or from all.
std::vector<int32_t> choose(int q, int P, bool group_limited) {
    Rng rng(uint64_t(1000 + q), "dispatcher choice");
    std::vector<int32_t> experts;
    for (int t = 0; t < kTokens; ++t) {
        const int n = group_limited ? kExperts / P : kExperts;
        const int lo = group_limited ? int(rng.next() % uint64_t(P)) * n : 0;
        std::vector<int32_t> pool(static_cast<size_t>(n));
        std::iota(pool.begin(), pool.end(), lo);
        for (int j = 0; j < kTopK; ++j) {
            std::swap(pool[size_t(j)], pool[size_t(j) + size_t(rng.next() % uint64_t(n - j))]);
            experts.push_back(pool[size_t(j)]);
        }
    }
    return experts;
}

std::vector<double> normals(size_t n, Rng& rng) {
    std::vector<double> v(n);
    for (double& x : v) x = rng.normal();
    return v;
}


// The experts: local row l of local expert e is scaled by (global expert + 1).
void run_experts(Ops& ops, Tensor in, Tensor out, const std::vector<int64_t>& offsets, int first_expert) {
    std::vector<double> v = host_values(ops, in);
    for (size_t e = 0; e + 1 < offsets.size(); ++e)
        for (int64_t r = offsets[e] * kHidden; r < offsets[e + 1] * kHidden; ++r) v[size_t(r)] *= first_expert + e + 1;
    upload_values(ops, out, v);
}

void check_near(const char* what, const std::vector<double>& got, const std::vector<double>& want, double rtol) {
    REQUIRE(got.size() == want.size());
    double scale = 0, worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, std::fabs(want[i]));
        worst = std::max(worst, std::fabs(got[i] - want[i]));
    }
    INFO(what << ": max |difference| " << worst << ", max |reference| " << scale);
    CHECK(worst <= rtol * scale);
}

// What crosses between ranks for one rank's layer, from every rank's choice.
struct Traffic {
    int64_t slots_out = 0, slots_in = 0;    // kept slots to other ranks' experts, and from other ranks
    int64_t packed_out = 0, packed_in = 0;  // distinct (token, rank) pairs of those
};

Traffic traffic(int me, int P, bool group_limited, std::optional<double> capacity) {
    const int El = kExperts / P;
    Traffic tr;
    for (int q = 0; q < P; ++q) {
        const std::vector<int32_t> experts = choose(q, P, group_limited);
        const RoutingPlan plan = build_routing_plan(experts.data(), kTokens, kTopK, kExperts, capacity);
        std::set<std::pair<int, int>> pairs;  // (token, rank) of kept slots
        for (int s = 0; s < kTokens * kTopK; ++s) {
            if (plan.slot_row[size_t(s)] < 0) continue;
            const int dest = experts[size_t(s)] / El;
            pairs.insert({s / kTopK, dest});
            if (q == me && dest != me) ++tr.slots_out;
            if (q != me && dest == me) ++tr.slots_in;
        }
        for (const auto& [t, dest] : pairs) {
            if (q == me && dest != me) ++tr.packed_out;
            if (q != me && dest == me) ++tr.packed_in;
        }
    }
    return tr;
}

}  // namespace

TEST_CASE("the dispatcher sends each token once per remote rank and combines its experts exactly", "[mpi]") {
    const int P = MpiCommunicator::world()->size();
    ProcessGroups groups = make_process_groups(P);
    const int me = groups.ep_rank(), El = kExperts / P;
    for (const bool group_limited : {true, false})
        for (const std::optional<double> capacity : {std::optional<double>{}, std::optional<double>{0.5}})
            for (const DType dt : {DType::F64, DType::F32})
                for (const bool on_host : {false, true}) {
                    INFO((group_limited ? "group-limited" : "any experts")
                         << (capacity ? ", capacity factor 0.5" : ", dropless") << ", "
                         << (dt == DType::F64 ? "F64" : "F32") << ", planned on the "
                         << (on_host ? "host" : "backend") << ", " << P << " ranks");
                    const double rtol = dt == DType::F64 ? 1e-13 : 1e-5;
                    CpuOps ops;
                    const Precision pr(dt);
                    TokenDispatcher dispatcher(kExperts, kTopK, capacity, GroupPlace(groups.ep.get()));
                    Arena acts(ops), scratch(ops);
                    dispatcher.carve(acts, scratch, pr, kTokens, kHidden);
                    acts.allocate();
                    scratch.allocate();
                    dispatcher.carve(acts, scratch, pr, kTokens, kHidden);

                    const std::vector<int32_t> experts = choose(me, P, group_limited);
                    const RoutingPlan plan = build_routing_plan(experts.data(), kTokens, kTopK, kExperts, capacity);
                    if (capacity) REQUIRE(plan.total_dropped() > 0);
                    Rng rng(uint64_t(7 + me), "dispatcher values");
                    const std::vector<double> x = normals(size_t(kTokens * kHidden), rng);
                    const std::vector<double> dy = normals(size_t(kTokens * kHidden), rng);
                    std::vector<double> w(size_t(kTokens * kTopK));
                    for (double& v : w) v = rng.uniform(0.1, 1.0);

                    // The tensors of one micro-batch, in a third arena.
                    Arena io(ops);
                    std::vector<Tensor> t(7);
                    for (int pass = 0; pass < 2; ++pass) {
                        t[0] = io.take(dt, {kTokens, kHidden});            // x
                        t[1] = io.take(dt, {kTokens, kHidden});            // y
                        t[2] = io.take(dt, {kTokens, kHidden});            // dy
                        t[3] = io.take(dt, {kTokens, kHidden});            // dx
                        t[4] = io.take(dt, {kTokens, kTopK});              // w
                        t[5] = io.take(dt, {kTokens, kTopK});              // dw
                        t[6] = io.take(DType::I32, {kTokens, kTopK});      // experts
                        if (pass == 0) io.allocate();
                    }
                    upload_values(ops, t[0], x);
                    upload_values(ops, t[2], dy);
                    upload_values(ops, t[4], w);
                    ops.copy_from_host(t[6], experts.data());
                    RouterChoice choice;
                    if (on_host) choice.host_experts = &experts;
                    else choice.experts = t[6];
                    choice.weights = t[4];

                    groups.ep->reset_bytes_sent_all_to_all();
                    const Tensor local = dispatcher.dispatch(ops, choice, t[0]);
                    run_experts(ops, local, dispatcher.expert_output(), dispatcher.local_offsets(), me * El);
                    dispatcher.combine(ops, t[1]);
                    const int64_t forward_bytes = groups.ep->bytes_sent_all_to_all();
                    ops.zero(t[5]);
                    const Tensor d_out = dispatcher.combine_backward(ops, t[2], t[5]);
                    run_experts(ops, d_out, dispatcher.expert_input_grad(), dispatcher.local_offsets(), me * El);
                    dispatcher.dispatch_backward(ops, dispatcher.expert_input_grad(), t[3]);
                    const int64_t backward_bytes = groups.ep->bytes_sent_all_to_all() - forward_bytes;

                    // y = sum_j w_j (e_j + 1) x, dw_j = (e_j + 1) dy.x, dx = sum_j w_j (e_j + 1) dy over kept slots.
                    std::vector<double> y(x.size(), 0.0), dx(x.size(), 0.0), dw(w.size(), 0.0);
                    for (int tok = 0; tok < kTokens; ++tok)
                        for (int j = 0; j < kTopK; ++j) {
                            const size_t s = size_t(tok * kTopK + j);
                            if (plan.slot_row[s] < 0) continue;
                            const double scale = experts[s] + 1;
                            for (int c = 0; c < kHidden; ++c) {
                                const size_t i = size_t(tok * kHidden + c);
                                y[i] += w[s] * scale * x[i];
                                dx[i] += w[s] * scale * dy[i];
                                dw[s] += scale * dy[i] * x[i];
                            }
                        }
                    check_near("y", host_values(ops, t[1]), y, rtol);
                    check_near("dw", host_values(ops, t[5]), dw, rtol);
                    check_near("dx", host_values(ops, t[3]), dx, rtol);

                    // Bytes: El + 1 counts to each other rank; per routed slot
                    // out its packed row's index (int32) and its weight; a
                    // packed row out and a combined row back per (token,
                    // rank) pair; the backward the same rows the other way and
                    // each slot in its weight's gradient.
                    const Traffic tr = traffic(me, P, group_limited, capacity);
                    const int64_t a = int64_t(dtype_size(pr.act)), s = int64_t(dtype_size(pr.stat));
                    const int64_t rows = (tr.packed_out + tr.packed_in) * kHidden * a;
                    const int64_t want_forward = (P - 1) * (El + 1) * 4 + tr.slots_out * (4 + s) + rows;
                    const int64_t want_backward = rows + tr.slots_in * s;
                    INFO("forward " << forward_bytes << " bytes, backward " << backward_bytes << "; slots "
                                    << tr.slots_out << " out, " << tr.slots_in << " in; packed rows "
                                    << tr.packed_out << " out, " << tr.packed_in << " in");
                    CHECK(forward_bytes == (P > 1 ? want_forward : 0));
                    CHECK(backward_bytes == (P > 1 ? want_backward : 0));
                    if (P > 1) {
                        REQUIRE(tr.slots_out > 0);
                        // A row per slot (the dispatch before) would send more rows.
                        const int64_t per_slot = (tr.slots_out + tr.slots_in) * kHidden * a;
                        if (group_limited) {
                            CHECK(tr.packed_out * kTopK >= tr.slots_out);
                            CHECK(tr.packed_out < tr.slots_out);
                            CHECK(forward_bytes < (P - 1) * El * 4 + per_slot);
                        } else {
                            CHECK(tr.packed_out <= tr.slots_out);
                        }
                    }
                }
}
