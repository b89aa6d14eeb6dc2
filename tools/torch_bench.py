#!/usr/bin/env python3
"""The PyTorch bar for moe-bench: the same network trained by PyTorch on the
same GPU, eager and under torch.compile, in tokens/s.

The model is MODEL.md's (tools/torch_reference.py is the float64 reference;
--check compares this one with it), written as a PyTorch user would write it
for speed: bf16 autocast over fp32 weights, q, k, v as one linear and each
expert's gate and up as one, F.scaled_dot_product_attention (causal, GQA),
the experts' rows sorted by expert and multiplied by torch._grouped_mm where
the build has it (else a loop over the experts), fused AdamW with the
config's clipping. moe-bench trains on random tokens; so does this.

  torch_bench.py --config configs/bench/medium.yaml [--steps 10] [--warmup 3] [--modes eager,compile]
  torch_bench.py --config configs/bench/medium.yaml --ops      # attention and expert GEMMs alone
  torch_bench.py --check [--device cuda]                       # this model against torch_reference.py

Supports the learned (softmax, top-k) and token_id routers, qk-norm, tied
embeddings and the INL dynamics (shared or per layer); a config with other
router options (capacity, sigmoid scores, groups, expert bias, shared
experts) is refused: torch_reference.py covers those.
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

PLAIN_MOE = {"score": "softmax", "groups": 1, "expert_bias_rate": None, "capacity_factor": None,
             "shared_experts": 0}


def check_supported(m):
    for key, plain in PLAIN_MOE.items():
        if m["moe"][key] != plain:
            raise ValueError(f"model.moe.{key}: {m['moe'][key]!r} is not covered here (only {plain!r}); "
                             "tools/torch_reference.py has every router option")


# ---------------------------------------------------------------- the model

class Model(torch.nn.Module):
    """MODEL.md's network over fused parameters: wqkv [(nh + 2 nkv) hd, H] per
    layer, experts' w13 [E, 2I, H] (gate rows, then up) and w2 [E, H, I]."""

    def __init__(self, m, P, grouped_mm=True):
        super().__init__()
        check_supported(m)
        self.m = m
        self.grouped_mm = grouped_mm and hasattr(torch, "_grouped_mm")
        E = m["moe"]["num_experts"]
        t = lambda x: torch.nn.Parameter(x.detach().clone())  # noqa: E731
        self.embed = t(P["embed.weight"])
        self.norm = t(P["norm.weight"])
        self.lm_head = None if m["tie_embeddings"] else t(P["lm_head.weight"])
        self.layers = torch.nn.ModuleList()
        for l in range(m["num_layers"]):
            p = f"layers.{l}."
            layer = torch.nn.Module()
            layer.attn_norm = t(P[p + "attn_norm.weight"])
            layer.wqkv = t(torch.cat([P[p + "attn." + w] for w in ("wq", "wk", "wv")]))
            layer.wo = t(P[p + "attn.wo"])
            if m["qk_norm"]:
                layer.q_norm = t(P[p + "attn.q_norm.weight"])
                layer.k_norm = t(P[p + "attn.k_norm.weight"])
            layer.moe_norm = t(P[p + "moe_norm.weight"])
            if m["moe"]["router"] == "learned":
                layer.router = t(P[p + "moe.router.weight"])
            e = f"{p}moe.experts."
            layer.w13 = t(torch.stack([torch.cat([P[f"{e}{i}.w_gate"], P[f"{e}{i}.w_up"]]) for i in range(E)]))
            layer.w2 = t(torch.stack([P[f"{e}{i}.w_down"] for i in range(E)]))
            self.layers.append(layer)
        self.dynamics = torch.nn.ModuleList()
        for p in ref.dynamics_prefixes(m):
            d = torch.nn.Module()
            for name in ("mu", "c1.weight", "c1.bias", "c2.weight", "c2.bias"):
                setattr(d, name.replace(".", "_"), t(P[p + name]))
            self.dynamics.append(d)

    def named_model_grads(self):
        """{MODEL.md name: gradient}, the fused parameters' split back."""
        m = self.m
        H, nh, nkv, E = m["hidden_size"], m["num_heads"], m["num_kv_heads"], m["moe"]["num_experts"]
        hd, I = H // nh, m["moe"]["expert_hidden_size"]
        g = {"embed.weight": self.embed.grad, "norm.weight": self.norm.grad}
        if self.lm_head is not None:
            g["lm_head.weight"] = self.lm_head.grad
        for l, layer in enumerate(self.layers):
            p = f"layers.{l}."
            g[p + "attn_norm.weight"] = layer.attn_norm.grad
            for name, block in zip(("wq", "wk", "wv"), layer.wqkv.grad.split([nh * hd, nkv * hd, nkv * hd])):
                g[p + "attn." + name] = block
            g[p + "attn.wo"] = layer.wo.grad
            if m["qk_norm"]:
                g[p + "attn.q_norm.weight"] = layer.q_norm.grad
                g[p + "attn.k_norm.weight"] = layer.k_norm.grad
            g[p + "moe_norm.weight"] = layer.moe_norm.grad
            if m["moe"]["router"] == "learned":
                g[p + "moe.router.weight"] = layer.router.grad
            for i in range(E):
                g[f"{p}moe.experts.{i}.w_gate"] = layer.w13.grad[i, :I]
                g[f"{p}moe.experts.{i}.w_up"] = layer.w13.grad[i, I:]
                g[f"{p}moe.experts.{i}.w_down"] = layer.w2.grad[i]
        for p, d in zip(ref.dynamics_prefixes(m), self.dynamics):
            for name in ("mu", "c1.weight", "c1.bias", "c2.weight", "c2.bias"):
                g[p + name] = getattr(d, name.replace(".", "_")).grad
        return g

    def forward(self, inputs, targets):
        """inputs, targets: long [B, T]. Returns (cross_entropy, aux)."""
        m = self.m
        B, T = inputs.shape
        ids = inputs.reshape(-1)
        h = self.embed[ids]
        v = torch.zeros_like(h)
        cos, sin = rope_table(T, m["hidden_size"] // m["num_heads"], m["rope_theta"], h)
        aux = torch.zeros((), dtype=torch.float32 if h.dtype != torch.float64 else h.dtype, device=h.device)
        for l, layer in enumerate(self.layers):
            x = h + self.attention(rmsnorm(h, layer.attn_norm, m["norm_eps"]), layer, B, T, cos, sin)
            y, aux_l = self.moe(rmsnorm(x, layer.moe_norm, m["norm_eps"]), ids, layer)
            h = x + y
            aux = aux + aux_l
            if len(self.dynamics):
                h, v = dynamics(h, v, self.dynamics[0 if len(self.dynamics) == 1 else l], m["dynamics"])
        lm_head = self.embed if self.lm_head is None else self.lm_head
        logits = F.linear(rmsnorm(h, self.norm, m["norm_eps"]), lm_head)
        return F.cross_entropy(logits.float() if logits.dtype == torch.bfloat16 else logits, targets.reshape(-1)), aux

    def attention(self, x, layer, B, T, cos, sin):
        m = self.m
        nh, nkv = m["num_heads"], m["num_kv_heads"]
        hd = m["hidden_size"] // nh
        qkv = F.linear(x, layer.wqkv).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)  # [B, heads, T, hd]
        q, k, v = qkv.split([nh, nkv, nkv], dim=1)
        if m["qk_norm"]:
            q, k = rmsnorm(q, layer.q_norm, m["norm_eps"]), rmsnorm(k, layer.k_norm, m["norm_eps"])
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        out = causal_attention(q, k, v)
        return F.linear(out.transpose(1, 2).reshape(B * T, nh * hd), layer.wo)

    def moe(self, x, ids, layer):
        moe = self.m["moe"]
        E, k = moe["num_experts"], moe["top_k"]
        N = x.shape[0]
        if moe["router"] == "token_id":
            experts = (ids % E).view(N, 1)
            weights = torch.ones(N, 1, dtype=torch.float32, device=x.device)
            aux = torch.zeros((), device=x.device)
        else:
            wide = x.dtype if x.dtype == torch.float64 else torch.float32  # fp32, as the engine's router
            logits = F.linear(x.to(wide), layer.router.to(wide))
            scores = logits.softmax(-1)
            weights, experts = scores.topk(k, dim=-1)
            if moe["normalize_top_k"]:
                weights = weights / weights.sum(-1, keepdim=True)
            f = expert_counts(experts.flatten(), E).to(scores.dtype) / (N * k)
            aux = moe["load_balancing_weight"] * E * (f * scores.mean(0)).sum()
            if moe["z_loss_weight"]:
                aux = aux + moe["z_loss_weight"] * logits.logsumexp(-1).pow(2).mean()
        # Slots sorted by expert: each expert's rows one block.
        flat = experts.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        token = order // k
        counts = expert_counts(flat, E)
        xs = x[token]
        a = self.experts_matmul(xs, layer.w13, counts)
        gate, up = a.chunk(2, dim=-1)
        ys = self.experts_matmul(F.silu(gate) * up, layer.w2, counts)
        ys = ys * weights.reshape(-1)[order, None].to(ys.dtype)
        y = torch.zeros(x.shape, dtype=ys.dtype, device=x.device).index_add(0, token, ys)
        return y, aux

    def experts_matmul(self, rows, w, counts):
        """rows [R, in] sorted by expert (counts[e] rows each) times w[e]^T [in, out]."""
        if self.grouped_mm and rows.is_cuda:
            dt = torch.bfloat16
            offs = counts.cumsum(0).to(torch.int32)
            return torch._grouped_mm(rows.to(dt), w.to(dt).transpose(-2, -1), offs=offs)
        out, first = [], 0
        for e, n in enumerate(counts.tolist()):
            out.append(F.linear(rows[first:first + n], w[e]))
            first += n
        return torch.cat(out)


def expert_counts(experts, E):
    """Slots per expert; of a fixed shape (bincount's depends on the values,
    which would break torch.compile's graph)."""
    return torch.zeros(E, dtype=torch.long, device=experts.device).scatter_add_(0, experts, torch.ones_like(experts))


def rmsnorm(x, weight, eps):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, weight.shape, weight, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_table(T, hd, theta, like):
    """cos and sin [T, hd/2], made on like's device (in float64 for a float64 model)."""
    dt = torch.float64 if like.dtype == torch.float64 else torch.float32
    inv_freq = theta ** (-2.0 * torch.arange(hd // 2, dtype=dt, device=like.device) / hd)
    angle = torch.arange(T, dtype=dt, device=like.device)[:, None] * inv_freq[None, :]
    return angle.cos(), angle.sin()


def rope(x, cos, sin):
    """Rotate-half RoPE on x [B, heads, T, hd]."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def causal_attention(q, k, v):
    group = q.shape[1] // k.shape[1]
    if hasattr(F, "scaled_dot_product_attention"):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=group > 1)
        except TypeError:  # before enable_gqa
            pass
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


def dynamics(h, v, d, cfg):
    H = h.shape[-1]
    z = F.silu(F.linear(torch.cat([h, v], -1), d.c1_weight, d.c1_bias))
    a, b, g = F.linear(z, d.c2_weight, d.c2_bias).split(H, dim=-1)
    mu = torch.clamp(d.mu, cfg["mu_min"], cfg["mu_max"])
    v_new = torch.clamp(torch.sigmoid(a) * v - torch.clamp(F.softplus(b), max=cfg["beta_max"]) * (h - mu),
                        -cfg["velocity_max"], cfg["velocity_max"])
    return h + cfg["dt"] * torch.sigmoid(g) * v_new, v_new


def init_parameters(m, generator):
    """MODEL.md's init where it names one, else N(0, init_std): the numbers
    the step runs on (its speed does not depend on them, but NaNs would)."""
    d, H, std = m["dynamics"], m["hidden_size"], m["init_std"]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    P = {}
    for name, shape in ref.parameter_shapes(m).items():
        if name.endswith("norm.weight"):
            P[name] = torch.ones(shape)
        elif name.endswith("mu"):
            P[name] = torch.full(shape, (d["mu_min"] + d["mu_max"]) / 2)
        elif name.endswith("c2.bias"):
            P[name] = torch.cat([torch.full((H,), logit(d["init_alpha"])),
                                 torch.full((H,), math.log(math.expm1(d["init_beta"]))),
                                 torch.full((H,), logit(d["init_gate"]))])
        elif name.endswith("c1.bias"):
            P[name] = torch.zeros(shape)
        else:
            P[name] = torch.randn(shape, generator=generator) * (0.01 if name.endswith("c2.weight") else std)
    return P


# ---------------------------------------------------------------- timing

def device_sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(cfg, mode, device, steps, warmup):
    m, t, opt = cfg["model"], cfg["train"], cfg.get("optimizer") or {}
    B, T = t["micro_batch_size"], t["seq_len"]
    model = Model(m, init_parameters(m, torch.Generator().manual_seed(1234))).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.get("lr", 3e-4),
                                  weight_decay=opt.get("weight_decay", 0.1), **fused)
    clip = opt.get("grad_clip", 1.0)
    loss_fn = torch.compile(model) if mode == "compile" else model
    gen = torch.Generator(device=device).manual_seed(7)
    batches = [torch.randint(0, m["vocab_size"], (2, B, T), generator=gen, device=device) for _ in range(4)]

    def step(i):
        inputs, targets = batches[i % len(batches)]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            ce, aux = loss_fn(inputs, targets)
            loss = ce + aux
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(warmup):
        loss = step(i)
    device_sync(device)
    first = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(warmup + i)
    device_sync(device)
    seconds = (time.perf_counter() - t0) / steps
    memory = (f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda"
              else "")
    print(f"torch {mode}: {B * T / seconds:.0f} tokens/s, {seconds * 1e3:.1f} ms a step over {steps} steps "
          f"(after {warmup} warm-up steps in {first:.1f} s), loss {loss.item():.4f}{memory}, "
          f"experts by {'torch._grouped_mm' if model.grouped_mm and device.type == 'cuda' else 'a loop'}",
          flush=True)


def cuda_ms(fn, reps=20):
    """Median milliseconds of fn() by CUDA events, after three warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def op_speeds(cfg, device):
    """The step's attention per SDPA backend and its expert GEMMs, alone, at
    the config's shapes, with moe-opbench's FLOP counts (causal pairs)."""
    m, t = cfg["model"], cfg["train"]
    B, T, H = t["micro_batch_size"], t["seq_len"], m["hidden_size"]
    nh, nkv = m["num_heads"], m["num_kv_heads"]
    hd = H // nh
    dt = torch.bfloat16
    pairs = B * nh * T * (T + 1) / 2
    q = torch.randn(B, nh, T, hd, device=device, dtype=dt, requires_grad=True)
    k = torch.randn(B, nkv, T, hd, device=device, dtype=dt, requires_grad=True)
    v = torch.randn(B, nkv, T, hd, device=device, dtype=dt, requires_grad=True)
    group = nh // nkv
    kx = k.detach().repeat_interleave(group, 1).requires_grad_()
    vx = v.detach().repeat_interleave(group, 1).requires_grad_()
    dout = torch.randn(B, nh, T, hd, device=device, dtype=dt)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        for gqa in (True, False):  # GQA inside the kernel, or k and v repeated per query head first
            kk, vv = (k, v) if gqa else (kx, vx)
            try:
                with sdpa_kernel(backend):
                    fwd = lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True,  # noqa: E731
                                                                 enable_gqa=gqa and group > 1)
                    out = fwd()
                    ms_f = cuda_ms(fwd)
                    ms_b = cuda_ms(lambda: torch.autograd.grad(out, (q, kk, vv), dout, retain_graph=True))
            except RuntimeError as e:
                print(f"attention {name}{' gqa' if gqa else ''}: not available ({str(e).splitlines()[0][:100]})")
                continue
            print(f"attention {name}, {'GQA in the kernel' if gqa else 'k, v repeated'}: forward {ms_f:.3f} ms "
                  f"({4 * pairs * hd / ms_f / 1e9:.0f} TFLOP/s), backward {ms_b:.3f} ms "
                  f"({10 * pairs * hd / ms_b / 1e9:.0f} TFLOP/s) [B {B}, T {T}, nh {nh}, nkv {nkv}, hd {hd}]",
                  flush=True)
    if hasattr(torch, "_grouped_mm"):
        E, kk, I = m["moe"]["num_experts"], m["moe"]["top_k"], m["moe"]["expert_hidden_size"]
        R = B * T * kk
        offs = torch.arange(1, E + 1, device=device, dtype=torch.int32) * (R // E)
        x = torch.randn(R // E * E, H, device=device, dtype=dt)
        w13 = torch.randn(E, 2 * I, H, device=device, dtype=dt) * 0.02
        w2 = torch.randn(E, H, I, device=device, dtype=dt) * 0.02
        a = torch.randn(R // E * E, I, device=device, dtype=dt)
        for name, fn, flops in (("gate+up", lambda: torch._grouped_mm(x, w13.transpose(-2, -1), offs=offs),
                                 4.0 * R * H * I),
                                ("down", lambda: torch._grouped_mm(a, w2.transpose(-2, -1), offs=offs),
                                 2.0 * R * H * I)):
            ms = cuda_ms(fn)
            print(f"experts {name} forward, torch._grouped_mm: {ms:.3f} ms ({flops / ms / 1e9:.0f} TFLOP/s) "
                  f"[R {R}, H {H}, I {I}, E {E}, equal loads]", flush=True)


# ---------------------------------------------------------------- check

def check(device):
    """This model's loss and gradients against torch_reference.py's on a small
    model and batch: float64 on the CPU (to 1e-10), or bf16 autocast on a GPU
    with the fast paths (SDPA, grouped GEMMs) to a bf16 tolerance."""
    cfgs = []
    for router, k, qk_norm, shared, tie in (("learned", 2, False, True, False), ("token_id", 1, True, False, True)):
        m = ref._merge(ref.DEFAULTS["model"], {
            "vocab_size": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
            "qk_norm": qk_norm, "tie_embeddings": tie,
            "moe": {"num_experts": 4, "top_k": k, "expert_hidden_size": 32, "router": router,
                    "z_loss_weight": 0.001},
            "dynamics": {"shared": shared, "controller_size": 16}})
        cfgs.append(m)
    gpu = device.type == "cuda"
    worst = 0.0
    for m in cfgs:
        # The reference's own test weights (every path with a visible gradient).
        P = {n: torch.tensor(v, dtype=torch.float64)
             for n, v in ref.random_parameters(m, np.random.default_rng(5)).items()}
        rng = torch.Generator().manual_seed(5)
        inputs = torch.randint(0, m["vocab_size"], (2, 16), generator=rng)
        targets = torch.randint(0, m["vocab_size"], (2, 16), generator=rng)
        leaves = {n: p.clone().requires_grad_() for n, p in P.items()}
        ce_ref, aux_ref, _ = ref.forward(m, leaves, inputs, targets)
        (ce_ref + aux_ref).backward()
        model = Model(m, {n: p if not gpu else p.float() for n, p in P.items()}).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=gpu):
            ce, aux = model(inputs.to(device), targets.to(device))
        (ce + aux).backward()
        tol = 5e-2 if gpu else 1e-10
        loss_err = abs((ce + aux).item() - (ce_ref + aux_ref).item()) / abs((ce_ref + aux_ref).item())
        errors = {"loss": loss_err}
        for name, g in model.named_model_grads().items():
            want = leaves[name].grad
            errors[name] = ((g.double().cpu() - want).norm() / want.norm()).item()
        name, err = max(errors.items(), key=lambda kv: kv[1])
        print(f"check ({m['moe']['router']} router, {'bf16 on ' + str(device) if gpu else 'float64'}"
              f"{', grouped GEMMs' if model.grouped_mm and gpu else ''}): largest relative error {err:.2e} ({name})")
        if not err <= tol:
            sys.exit(f"torch_bench.py --check: '{name}' differs from torch_reference.py by {err:.2e} "
                     f"(relative), more than {tol:g}")
        worst = max(worst, err)
    print(f"check passed: largest relative error {worst:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="the engine's YAML config (model, train and optimizer sections)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="steps before the timed ones (compilation among them)")
    ap.add_argument("--modes", default="eager,compile", help="eager, compile, or both (comma-separated)")
    ap.add_argument("--ops", action="store_true", help="time attention per SDPA backend and the expert GEMMs alone")
    ap.add_argument("--check", action="store_true", help="compare with tools/torch_reference.py and stop")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.check:
        check(device)
        return
    if not args.config:
        ap.error("--config is required (or --check)")
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be at least 1")
    modes = args.modes.split(",")
    if not modes or any(mode not in ("eager", "compile") for mode in modes):
        ap.error(f"--modes takes eager and compile, got '{args.modes}'")
    if "compile" in modes and not hasattr(torch, "compile"):
        ap.error(f"torch {torch.__version__} has no torch.compile (2.0 and later): give --modes eager")
    try:
        cfg = ref.load_config(args.config)
        check_supported(cfg["model"])
        import yaml
        with open(args.config) as f:
            cfg["optimizer"] = (yaml.safe_load(f) or {}).get("optimizer") or {}
    except (OSError, ValueError) as e:
        sys.exit(f"torch_bench.py: {e}")
    # cuDNN's version says which of its fused attention graphs a native path could use there.
    cudnn = f", cuDNN {torch.backends.cudnn.version()}" if torch.backends.cudnn.is_available() else ", no cuDNN"
    print(f"torch {torch.__version__}{cudnn} on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'}, {args.config}", flush=True)
    if args.ops:
        if device.type != "cuda":
            sys.exit("torch_bench.py: --ops times kernels with CUDA events: it needs a GPU (--device cuda)")
        op_speeds(cfg, device)
        return
    for mode in modes:
        train_speed(cfg, mode, device, args.steps, args.warmup)


if __name__ == "__main__":
    main()
