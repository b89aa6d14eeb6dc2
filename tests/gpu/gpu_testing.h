// Helpers for the GPU tests: each CUDA op runs on the same inputs as the CPU
// reference op. Inputs are rounded to bf16 first, so both backends see the
// same numbers and a difference is the op's own rounding, not the inputs'.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/params/rng.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/catch.h"

namespace moe::test {

// One CPU and one GPU backend, and device buffers freed with the fixture.
struct Backends {
    CpuOps cpu;
    CudaOps gpu{0};
    std::vector<void*> owned;

    ~Backends() {
        for (void* p : owned) gpu.release(p);
    }
    // A device tensor of dtype dt holding host (F32 values, converted).
    Tensor upload(const std::vector<float>& host, DType dt, std::initializer_list<int64_t> dims) {
        Tensor t(nullptr, dt, dims);
        REQUIRE(size_t(t.numel()) == host.size());
        t.data = gpu.alloc(t.bytes());
        owned.push_back(t.data);
        if (dt == DType::BF16) {
            std::vector<__nv_bfloat16> b(host.size());
            for (size_t i = 0; i < host.size(); ++i) b[i] = __float2bfloat16_rn(host[i]);
            gpu.copy_from_host(t, b.data());
        } else {
            gpu.copy_from_host(t, host.data());
        }
        return t;
    }
    Tensor upload_ids(const std::vector<int32_t>& host, std::initializer_list<int64_t> dims) {
        Tensor t(nullptr, DType::I32, dims);
        REQUIRE(size_t(t.numel()) == host.size());
        t.data = gpu.alloc(t.bytes());
        owned.push_back(t.data);
        gpu.copy_from_host(t, host.data());
        return t;
    }
    // A zero-filled device tensor.
    Tensor zeros(DType dt, std::initializer_list<int64_t> dims) {
        Tensor t(nullptr, dt, dims);
        t.data = gpu.alloc(t.bytes());
        owned.push_back(t.data);
        return t;
    }
    // A device F32 or BF16 tensor's values as floats.
    std::vector<float> download(Tensor t) {
        std::vector<float> out(static_cast<size_t>(t.numel()));
        if (t.dtype == DType::BF16) {
            std::vector<__nv_bfloat16> b(out.size());
            gpu.copy_to_host(b.data(), t);
            for (size_t i = 0; i < out.size(); ++i) out[i] = __bfloat162float(b[i]);
        } else {
            REQUIRE(t.dtype == DType::F32);
            gpu.copy_to_host(out.data(), t);
        }
        return out;
    }
    std::vector<int32_t> download_ids(Tensor t) {
        std::vector<int32_t> out(static_cast<size_t>(t.numel()));
        gpu.copy_to_host(out.data(), t);
        return out;
    }
};

inline float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// n normal values of std `scale`, rounded to bf16 (exact in both backends).
inline std::vector<float> bf16_normals(int64_t n, Rng& rng, double scale = 1) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = round_bf16(float(scale * rng.normal()));
    return v;
}

// A host F32 vector viewed as a CPU tensor.
inline Tensor host_tensor(std::vector<float>& v, std::initializer_list<int64_t> dims) {
    return Tensor(v.data(), DType::F32, dims);
}
inline Tensor host_ids(std::vector<int32_t>& v, std::initializer_list<int64_t> dims) {
    return Tensor(v.data(), DType::I32, dims);
}

// Every gpu[i] lies within atol + rtol * |cpu[i]| of cpu[i]; on failure the
// message names the worst element.
inline void require_near(const std::string& what, const std::vector<float>& gpu, const std::vector<float>& cpu,
                         double rtol, double atol) {
    REQUIRE(gpu.size() == cpu.size());
    if (gpu.empty()) return;  // nothing to compare, and no worst element to name
    size_t worst = 0;
    double worst_excess = -INFINITY;
    for (size_t i = 0; i < gpu.size(); ++i) {
        const double err = std::fabs(double(gpu[i]) - double(cpu[i]));
        const double excess = std::isfinite(gpu[i]) ? err - (atol + rtol * std::fabs(double(cpu[i]))) : INFINITY;
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
    }
    INFO(what << ": worst element " << worst << " of " << gpu.size() << ": gpu " << gpu[worst] << " cpu "
              << cpu[worst] << " (atol " << atol << ", rtol " << rtol << ")");
    REQUIRE(worst_excess <= 0);
}

// Tolerances of a bf16 output against the fp32 CPU op on bf16-exact inputs:
// one bf16 rounding of the result (2^-8 relative) plus fp32 accumulation.
constexpr double kBf16Rtol = 1.0 / 128;
constexpr double kBf16Atol = 1e-3;

// Sets an environment variable for a scope (what CudaOps reads at
// construction), and puts back what was there.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        setenv(name, value, 1);
    }
    ~ScopedEnv() {
        if (old_)
            setenv(name_, old_->c_str(), 1);
        else
            unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    const char* name_;
    std::optional<std::string> old_;
};

}  // namespace moe::test
