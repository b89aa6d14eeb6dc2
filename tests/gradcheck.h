// Central finite differences in double against analytic gradients.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

#include "tests/catch.h"

namespace moe::test {

// f() recomputes the scalar loss from the current contents of x[0..n).
// grad[i] is the analytic dloss/dx[i]. Up to max_checks elements, spread
// evenly over x, are perturbed by +-eps; each must agree within
// atol + rtol * max(|numeric|, |analytic|).
inline void check_gradient(const std::string& name, const std::function<double()>& f, double* x,
                           const double* grad, int64_t n, double rtol = 1e-6, double atol = 1e-9,
                           int64_t max_checks = 48, double eps = 1e-6) {
    const int64_t stride = std::max<int64_t>(1, n / max_checks);
    int64_t checked = 0;
    for (int64_t i = 0; i < n && checked < max_checks; i += stride, ++checked) {
        const double saved = x[i];
        x[i] = saved + eps;
        const double up = f();
        x[i] = saved - eps;
        const double down = f();
        x[i] = saved;
        const double numeric = (up - down) / (2 * eps);
        const double analytic = grad[i];
        const double tol = atol + rtol * std::max(std::fabs(numeric), std::fabs(analytic));
        INFO(name << "[" << i << "]: numeric " << numeric << " analytic " << analytic);
        REQUIRE(std::fabs(numeric - analytic) <= tol);
    }
    REQUIRE(checked > 0);
}

}  // namespace moe::test
