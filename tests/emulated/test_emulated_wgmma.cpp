// The emulated wgmma keeps a product's result from its accumulator until
// wgmma.wait_group lands the product's commit group, as the PTX ISA says: the
// attention kernels' tests catch an accumulator read too early only so.
#include <cmath>

#include "tests/catch.h"
#include "tests/emulated/emulated_ptx.h"

namespace {

namespace em = moe::emulated;

constexpr int kN = 64;  // m64n64k16: a warpgroup's accumulator is float[8][4] a thread

// What one thread saw of its two accumulators at each point of the test.
struct Seen {
    bool queued_unlanded, oldest_landed, newer_landed, all_landed;
};
Seen seen[em::kMaxThreads];

// d += 1 * 1 over k 16: every element grows by 16 when the product lands.
void add_ones(float (&d)[kN / 8][4]) {
    em::wgmma<kN>(d, [](int, int) { return 1.f; }, [](int, int) { return 1.f; });
}
bool all_are(const float (&d)[kN / 8][4], float x) {
    for (const auto& row : d)
        for (float v : row)
            if (!(v == x)) return false;
    return true;
}
bool all_unlanded(const float (&d)[kN / 8][4]) {
    for (const auto& row : d)
        for (float v : row)
            if (!std::isnan(v)) return false;
    return true;
}

}  // namespace

TEST_CASE("emulated wgmma.wait_group lands every commit group but the n latest", "[gpu]") {
    em::launch(dim3(1), 128, 0, [] {
        Seen& s = seen[threadIdx.x];
        float a[kN / 8][4] = {}, b[kN / 8][4] = {};
        add_ones(a);
        em::wgmma_commit();  // group 0: a
        add_ones(b);
        em::wgmma_commit();  // group 1: b
        s.queued_unlanded = all_unlanded(a) && all_unlanded(b);
        em::wgmma_wait(1);  // group 0 lands, group 1 may still run
        s.oldest_landed = all_are(a, 16.f) && all_unlanded(b);
        add_ones(a);         // onto a again: it follows the product before
        em::wgmma_commit();  // group 2: a
        em::wgmma_wait(1);
        s.newer_landed = all_are(b, 16.f) && all_unlanded(a);
        em::wgmma_wait(0);
        s.all_landed = all_are(a, 32.f) && all_are(b, 16.f);
    });
    for (int t = 0; t < 128; ++t) {
        INFO("thread " << t);
        CHECK(seen[t].queued_unlanded);
        CHECK(seen[t].oldest_landed);
        CHECK(seen[t].newer_landed);
        CHECK(seen[t].all_landed);
    }
}
