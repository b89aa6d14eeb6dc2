// The INL dynamics update (MODEL.md "INL dynamics"), elementwise over h, v
// [N,H] with the controller output ctrl [N,3H] = (a | b | g) and mu [H]:
//   alpha = sigmoid(a), beta = min(softplus(b), beta_max), gate = sigmoid(g),
//   v' = clamp(alpha v - beta (h - clamp(mu)), +-velocity_max), h' = h + dt gate v'.
// Clamps and the min pass gradient as torch.clamp does: only where
// lo <= x <= hi, bounds included. Math is in double whatever the tensor dtype.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/dispatch.h"

namespace moe {

namespace {

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
// As torch's softplus (beta 1, threshold 20): linear above 20, where
// log1p(exp(x)) would round to x anyway and exp could overflow.
double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }
double softplus_grad(double x) { return x > 20 ? 1 : sigmoid(x); }
bool passes(double x, double lo, double hi) { return lo <= x && x <= hi; }

// One element's update, with what its backward needs.
struct Step {
    double alpha, beta, gate, mu_c, v_new;
    bool beta_passes, mu_passes, v_passes;  // the clamp did not clip
};

Step step(double h, double v, double a, double b, double g, double mu, const DynamicsParams& p) {
    Step s;
    s.alpha = sigmoid(a);
    const double sp = softplus(b);
    s.beta_passes = sp <= p.beta_max;
    s.beta = std::min(sp, p.beta_max);
    s.gate = sigmoid(g);
    s.mu_passes = passes(mu, p.mu_min, p.mu_max);
    s.mu_c = std::clamp(mu, p.mu_min, p.mu_max);
    const double u = s.alpha * v - s.beta * (h - s.mu_c);
    s.v_passes = passes(u, -p.velocity_max, p.velocity_max);
    s.v_new = std::clamp(u, -p.velocity_max, p.velocity_max);
    return s;
}

void check_shapes(const char* op, Tensor h, Tensor v, Tensor ctrl, Tensor mu) {
    const int64_t N = h.dim(0), H = h.dim(1);
    if (h.ndim != 2 || v.numel() != N * H || ctrl.ndim != 2 || ctrl.dim(0) != N || ctrl.dim(1) != 3 * H ||
        mu.numel() != H)
        throw std::invalid_argument(std::string(op) + ": expected h, v [N,H], ctrl [N,3H] and mu [H]; got h " +
                                    h.shape_str() + ", v " + v.shape_str() + ", ctrl " + ctrl.shape_str() +
                                    ", mu " + mu.shape_str());
}

// The controller's last layer: act [N,C], weight [3H,C], bias [3H], h [N,H].
void check_control(const char* op, Tensor h, Tensor act, Tensor weight, Tensor bias) {
    const bool fits = h.ndim == 2 && act.ndim == 2 && weight.ndim == 2 && act.dim(0) == h.dim(0) &&
                      weight.dim(0) == 3 * h.dim(1) && weight.dim(1) == act.dim(1) && bias.numel() == 3 * h.dim(1);
    if (!fits)
        throw std::invalid_argument(std::string(op) + ": expected h [N,H] and the controller's act [N,C], weight "
                                    "[3H,C] and bias [3H]; got h " + h.shape_str() + ", act " + act.shape_str() +
                                    ", weight " + weight.shape_str() + ", bias " + bias.shape_str());
}

// ctrl [N,3H] for rows h, in `bytes`, as dynamics_control makes it.
Tensor make_control(CpuOps& ops, std::vector<unsigned char>& bytes, const char* op, Tensor h, Tensor act,
                    Tensor weight, Tensor bias) {
    check_control(op, h, act, weight, bias);
    bytes.resize(size_t(h.dim(0) * 3 * h.dim(1)) * dtype_size(h.dtype));
    Tensor ctrl(bytes.data(), h.dtype, {h.dim(0), 3 * h.dim(1)});
    ops.dynamics_control(ctrl, act, weight, bias);
    return ctrl;
}

// An output or gradient has the shape of what it belongs to; an optional one
// (a gradient) may be empty, meaning "not wanted".
void check_like(const char* op, const char* name, Tensor t, Tensor like, bool optional = false) {
    if (optional && t.empty()) return;
    if (t.empty() || t.numel() != like.numel())
        throw std::invalid_argument(std::string(op) + ": " + name + " " + t.shape_str() + " must have " +
                                    std::to_string(like.numel()) + " elements, like " + like.shape_str());
}

// dmu sums over rows: rows go to threads in chunks of this fixed size and the
// chunks' partial sums are added in chunk order, whatever the thread count.
constexpr int64_t kRowsPerChunk = 64;

}  // namespace

void CpuOps::dynamics_forward(Tensor h_out, Tensor v_out, Tensor h, Tensor v, Tensor act, Tensor weight,
                              Tensor bias, Tensor mu, const DynamicsParams& p) {
    std::vector<unsigned char> ctrl_bytes;
    const Tensor ctrl = make_control(*this, ctrl_bytes, "dynamics_forward", h, act, weight, bias);
    check_shapes("dynamics_forward", h, v, ctrl, mu);
    const int64_t N = h.dim(0), H = h.dim(1);
    check_like("dynamics_forward", "h_out", h_out, h);
    check_like("dynamics_forward", "v_out", v_out, h);
    dispatch_float(h, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *hp = h.ptr<T>(), *vp = v.ptr<T>(), *cp = ctrl.ptr<T>(), *mp = mu.ptr<T>();
        T *ho = h_out.ptr<T>(), *vo = v_out.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            const T* cn = cp + n * 3 * H;
            for (int64_t c = 0; c < H; ++c) {
                const int64_t i = n * H + c;
                const Step s = step(hp[i], vp[i], cn[c], cn[H + c], cn[2 * H + c], mp[c], p);
                ho[i] = T(hp[i] + p.dt * s.gate * s.v_new);
                vo[i] = T(s.v_new);
            }
        }
    });
}

void CpuOps::dynamics_control(Tensor ctrl, Tensor act, Tensor weight, Tensor bias) {
    matmul_forward(ctrl, act, weight, bias);
}

void CpuOps::dynamics_backward(Tensor dh, Tensor dv, Tensor dctrl, Tensor dmu, Tensor dbias, Tensor dh_out,
                               Tensor dv_out, Tensor h, Tensor v, Tensor act, Tensor weight, Tensor bias, Tensor mu,
                               const DynamicsParams& p, Write write, Write dw_write) {
    const char* op = "dynamics_backward";
    check_like(op, "dbias", dbias, bias, true);
    if (!dbias.empty()) {
        // dctrl written over (apart when it is added to), then its column
        // sums as matmul_backward's db sums them: row after row.
        const int64_t N = h.dim(0), O = 3 * h.dim(1);
        const bool separate = write == Write::add || dctrl.empty();
        std::vector<unsigned char> apart(separate ? size_t(N * O) * dtype_size(h.dtype) : 0);
        const Tensor terms = separate ? Tensor(apart.data(), h.dtype, {N, O}) : dctrl;
        if (separate) {
            dynamics_backward(dh, dv, {}, dmu, {}, dh_out, dv_out, h, v, act, weight, bias, mu, p, write, dw_write);
            dynamics_backward({}, {}, terms, {}, {}, dh_out, dv_out, h, v, act, weight, bias, mu, p,
                              Write::overwrite, dw_write);
        } else {
            dynamics_backward(dh, dv, dctrl, dmu, {}, dh_out, dv_out, h, v, act, weight, bias, mu, p, write,
                              dw_write);
        }
        if (dw_write == Write::overwrite) zero(dbias);
        dispatch_float(terms, [&](auto tag) {
            using T = std::remove_pointer_t<decltype(tag)>;
            const T* g = terms.ptr<T>();
            T* db = dbias.ptr<T>();
            for (int64_t n = 0; n < N; ++n)
                for (int64_t o = 0; o < O; ++o) db[o] += g[n * O + o];
        });
        if (separate && !dctrl.empty()) add(dctrl, terms);
        return;
    }
    std::vector<unsigned char> ctrl_bytes;
    const Tensor ctrl = make_control(*this, ctrl_bytes, op, h, act, weight, bias);
    check_shapes(op, h, v, ctrl, mu);
    check_like(op, "dh_out", dh_out, h);
    check_like(op, "dv_out", dv_out, h);
    check_like(op, "dh", dh, h, true);
    check_like(op, "dv", dv, h, true);
    check_like(op, "dctrl", dctrl, ctrl, true);
    check_like(op, "dmu", dmu, mu, true);
    if (write == Write::overwrite)
        for (Tensor g : {dh, dv, dctrl})
            if (!g.empty()) zero(g);
    if (dw_write == Write::overwrite && !dmu.empty()) zero(dmu);
    const int64_t N = h.dim(0), H = h.dim(1);
    const int64_t chunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
    std::vector<double> dmu_part(dmu.empty() ? 0 : size_t(chunks * H), 0.0);
    dispatch_float(h, [&](auto tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const T *hp = h.ptr<T>(), *vp = v.ptr<T>(), *cp = ctrl.ptr<T>(), *mp = mu.ptr<T>();
        const T *gh_out = dh_out.ptr<T>(), *gv_out = dv_out.ptr<T>();
        T* gh = dh.empty() ? nullptr : dh.ptr<T>();
        T* gv = dv.empty() ? nullptr : dv.ptr<T>();
        T* gc = dctrl.empty() ? nullptr : dctrl.ptr<T>();
#pragma omp parallel for schedule(static)
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
            const int64_t end = std::min(N, (chunk + 1) * kRowsPerChunk);
            for (int64_t n = chunk * kRowsPerChunk; n < end; ++n) {
                const T* cn = cp + n * 3 * H;
                for (int64_t c = 0; c < H; ++c) {
                    const int64_t i = n * H + c;
                    const double b = cn[H + c];
                    const Step s = step(hp[i], vp[i], cn[c], b, cn[2 * H + c], mp[c], p);
                    const double g_h = gh_out[i];
                    // h' = h + dt gate v' feeds v' as well as the v' output.
                    const double g_vnew = gv_out[i] + g_h * p.dt * s.gate;
                    const double g_u = s.v_passes ? g_vnew : 0;  // u = alpha v - beta (h - mu_c)
                    if (gh) gh[i] += T(g_h - g_u * s.beta);
                    if (gv) gv[i] += T(g_u * s.alpha);
                    if (gc) {
                        T* gcn = gc + n * 3 * H;
                        gcn[c] += T(g_u * vp[i] * s.alpha * (1 - s.alpha));
                        if (s.beta_passes) gcn[H + c] += T(-g_u * (hp[i] - s.mu_c) * softplus_grad(b));
                        gcn[2 * H + c] += T(g_h * p.dt * s.v_new * s.gate * (1 - s.gate));
                    }
                    if (!dmu_part.empty() && s.mu_passes) dmu_part[chunk * H + c] += g_u * s.beta;
                }
            }
        }
        if (dmu.empty()) return;
        T* gm = dmu.ptr<T>();
        for (int64_t c = 0; c < H; ++c) {
            double sum = 0;
            for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += dmu_part[chunk * H + c];
            gm[c] += T(sum);
        }
    });
}

}  // namespace moe
