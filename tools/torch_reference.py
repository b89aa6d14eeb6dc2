#!/usr/bin/python3
"""PyTorch reference of the model in MODEL.md, for checking the C++ engine.

Runs one forward and backward in float64 from given weights on a given batch
and writes the loss and every gradient, under the MODEL.md parameter names,
as the engine's parity mode (`moe-train --batch ... --dump-grads ...`) does.

  torch_reference.py --config C.yaml --weights W.safetensors --batch B.safetensors --out G.safetensors
  torch_reference.py --config C.yaml --make-inputs --seed 7 --weights W.safetensors --batch B.safetensors
  torch_reference.py --config OUT/config.json --weights OUT/model.safetensors --batch B.safetensors --out G.safetensors

--config takes the engine's YAML config or the config.json that `moe-checkpoint
export` writes beside the weights (which must name every model key and no other).

Written against torch 1.13 (Debian 12's python3-torch); attention is spelled
out rather than using newer fused APIs.
"""

import argparse
import copy
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

# The model's keys, with the defaults of engine/config.h.
DEFAULTS = {
    "model": {
        "vocab_size": 256,
        "hidden_size": 128,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "qk_norm": False,
        "tie_embeddings": False,
        "rope_theta": 10000.0,
        "norm_eps": 1e-6,
        "init_std": 0.02,  # the engine's initialisation; unused here, where the weights are given
        "moe": {
            "num_experts": 4,
            "top_k": 2,
            "expert_hidden_size": 256,
            "router": "learned",
            "normalize_top_k": True,
            "score": "softmax",
            "groups": 1,
            "group_limit": 0,
            "expert_bias_rate": None,
            "load_balancing_weight": 0.01,
            # micro_batch or global_batch: the same loss for the one micro-batch of one rank checked here
            "balance_scope": "micro_batch",
            "z_loss_weight": 0.0,
            "capacity_factor": None,
            "shared_experts": 0,
            "shared_expert_hidden_size": 0,  # 0: expert_hidden_size
        },
        "dynamics": {
            "enabled": True,
            "shared": True,
            "controller_size": 64,
            "dt": 0.1,
            "beta_max": 2.0,
            "velocity_max": 10.0,
            "mu_min": 0.0,
            "mu_max": 2.0,
            "init_alpha": 0.9,
            "init_beta": 0.1,
            "init_gate": 0.5,
        },
    },
    "train": {"seq_len": 128, "micro_batch_size": 8},
}


def _merge(defaults, given):
    out = copy.deepcopy(defaults)
    for key, value in (given or {}).items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_keys(given, defaults, where, complete):
    """Raises ValueError on a key the model does not have, or, when complete,
    on one it has that is missing; where: the path of given ("model.")."""
    for key, value in given.items():
        if key not in defaults:
            raise ValueError(f"unknown key '{where}{key}'")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"'{where}{key}' must be a section, got {value!r}")
            _check_keys(value, defaults[key], f"{where}{key}.", complete)
    if complete:
        missing = [key for key in defaults if key not in given]
        if missing:
            raise ValueError(f"missing key '{where}{missing[0]}'")


def load_config(path):
    """The model (and train) settings: from the engine's YAML config (its model
    and train sections over the engine's defaults), or from the config.json of
    `moe-checkpoint export` (which holds every model key and no train section)."""
    if path.endswith(".json"):
        try:
            with open(path) as f:
                given = json.load(f)
            # as tools/checkpoint_tool.cpp writes it: its header, then the model section
            if (not isinstance(given, dict) or given.pop("architecture", None) != "moe-inl"
                    or given.pop("format_version", None) != 1):
                raise ValueError("not a config.json of moe-checkpoint export (architecture moe-inl, format_version 1)")
            _check_keys(given, DEFAULTS["model"], "", complete=True)  # keys as the file nests them
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        cfg = {"model": given, "train": None}
    else:
        with open(path) as f:
            given = yaml.safe_load(f) or {}
        try:
            _check_keys(given.get("model") or {}, DEFAULTS["model"], "model.", complete=False)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        cfg = _merge(DEFAULTS, {k: given[k] for k in ("model", "train") if k in given})
    m = cfg["model"]
    if m["moe"]["router"] not in ("learned", "token_id"):
        raise ValueError(f"model.moe.router must be learned or token_id, got {m['moe']['router']!r}")
    if m["moe"]["router"] == "token_id" and m["moe"]["top_k"] != 1:
        raise ValueError("model.moe.router token_id needs model.moe.top_k: 1")
    return cfg


# ---------------------------------------------------------------- parameters

def dynamics_prefixes(m):
    d = m["dynamics"]
    if not d["enabled"]:
        return []
    if d["shared"]:
        return ["dynamics."]
    return [f"layers.{l}.dynamics." for l in range(m["num_layers"])]


def parameter_shapes(m):
    """{name: shape} of every parameter, MODEL.md names and layouts."""
    V, H, L = m["vocab_size"], m["hidden_size"], m["num_layers"]
    nh, nkv = m["num_heads"], m["num_kv_heads"]
    hd = H // nh
    moe, dyn = m["moe"], m["dynamics"]
    E, I, C = moe["num_experts"], moe["expert_hidden_size"], dyn["controller_size"]
    shapes = {"embed.weight": (V, H), "norm.weight": (H,)}
    if not m["tie_embeddings"]:
        shapes["lm_head.weight"] = (V, H)
    for l in range(L):
        p = f"layers.{l}."
        shapes[p + "attn_norm.weight"] = (H,)
        shapes[p + "attn.wq"] = (nh * hd, H)
        shapes[p + "attn.wk"] = (nkv * hd, H)
        shapes[p + "attn.wv"] = (nkv * hd, H)
        shapes[p + "attn.wo"] = (H, nh * hd)
        if m["qk_norm"]:
            shapes[p + "attn.q_norm.weight"] = (hd,)
            shapes[p + "attn.k_norm.weight"] = (hd,)
        shapes[p + "moe_norm.weight"] = (H,)
        if moe["router"] == "learned":
            shapes[p + "moe.router.weight"] = (E, H)
        if moe["expert_bias_rate"] is not None:
            shapes[p + "moe.router.expert_bias"] = (E,)  # a state: chooses, not trained
        for e in range(E):
            shapes[p + f"moe.experts.{e}.w_gate"] = (I, H)
            shapes[p + f"moe.experts.{e}.w_up"] = (I, H)
            shapes[p + f"moe.experts.{e}.w_down"] = (H, I)
        if moe["shared_experts"]:  # fused: shared expert i is rows i*I_s..(i+1)*I_s
            Is = moe["shared_experts"] * (moe["shared_expert_hidden_size"] or I)
            shapes[p + "moe.shared_experts.w_gate"] = (Is, H)
            shapes[p + "moe.shared_experts.w_up"] = (Is, H)
            shapes[p + "moe.shared_experts.w_down"] = (H, Is)
    for p in dynamics_prefixes(m):
        shapes[p + "mu"] = (H,)
        shapes[p + "c1.weight"] = (C, 2 * H)
        shapes[p + "c1.bias"] = (C,)
        shapes[p + "c2.weight"] = (3 * H, C)
        shapes[p + "c2.bias"] = (3 * H,)
    return shapes


def random_parameters(m, rng):
    """Generic test weights (not MODEL.md's init): large enough that every path
    carries a visible gradient, with the dynamics biases near their init."""
    d = m["dynamics"]
    H = m["hidden_size"]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    c2_bias = np.concatenate([
        np.full(H, logit(d["init_alpha"])),
        np.full(H, math.log(math.expm1(d["init_beta"]))),
        np.full(H, logit(d["init_gate"])),
    ])
    out = {}
    for name, shape in parameter_shapes(m).items():
        noise = rng.standard_normal(shape)
        if name.endswith("norm.weight"):
            value = 1 + 0.1 * noise
        elif name.endswith("mu"):
            value = 1 + 0.1 * noise
        elif name.endswith("c2.bias"):
            value = c2_bias + 0.1 * noise
        else:
            value = 0.3 * noise
        out[name] = value.astype(np.float32)
    return out


# ---------------------------------------------------------------- model ops

def rmsnorm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x, theta):
    """Rotate-half RoPE on x [B, heads, T, hd]; position = index along T."""
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    inv_freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / hd)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def attention(x, P, prefix, m, B, T):
    """GQA causal self-attention on x [N, H] (N = B*T, sequence-major)."""
    H, nh, nkv = m["hidden_size"], m["num_heads"], m["num_kv_heads"]
    hd = H // nh
    heads = lambda t, n: t.view(B, T, n, hd).transpose(1, 2)  # noqa: E731  [B, n, T, hd]
    q = heads(x @ P[prefix + "wq"].T, nh)
    k = heads(x @ P[prefix + "wk"].T, nkv)
    v = heads(x @ P[prefix + "wv"].T, nkv)
    if m["qk_norm"]:
        q = rmsnorm(q, P[prefix + "q_norm.weight"], m["norm_eps"])
        k = rmsnorm(k, P[prefix + "k_norm.weight"], m["norm_eps"])
    q, k = rope(q, m["rope_theta"]), rope(k, m["rope_theta"])
    group = nh // nkv  # query head j reads kv head j // group
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(B * T, nh * hd)
    return out @ P[prefix + "wo"].T


def route(x, ids, P, prefix, moe):
    """Returns (experts [N, k] long, weights [N, k], aux scalar)."""
    E, k = moe["num_experts"], moe["top_k"]
    N = x.shape[0]
    if moe["router"] == "token_id":
        experts = (ids % E).long().view(N, 1)
        return experts, torch.ones(N, 1, dtype=x.dtype), torch.zeros((), dtype=x.dtype)
    logits = x @ P[prefix + "router.weight"].T
    sigmoid = moe["score"] == "sigmoid"
    scores = logits.sigmoid() if sigmoid else logits.softmax(-1)
    key = scores.detach()
    if moe["expert_bias_rate"] is not None:  # the expert bias steers the choice only
        key = key + P[prefix + "router.expert_bias"].detach()
    # Group-limited choice (docs/MODEL-OPTIONS.md): a group scores the sum of
    # its two largest keys; experts outside the token's best groups are out.
    G = moe["groups"]
    if G > 1:
        size = E // G
        group_score = key.view(N, G, size).topk(min(2, size), dim=-1).values.sum(-1)
        best = torch.sort(group_score, dim=-1, descending=True, stable=True).indices[:, : moe["group_limit"] or G]
        allowed = torch.zeros(N, G, dtype=torch.bool).scatter(1, best, True).repeat_interleave(size, dim=1)
        key = key.masked_fill(~allowed, float("-inf"))
    # Largest k keys; a stable sort breaks ties toward the lower index.
    experts = torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :k]
    weights = scores.gather(1, experts)
    if moe["normalize_top_k"]:
        weights = weights / weights.sum(-1, keepdim=True)
    # Switch load balancing: f_e = share of the N*k slots routed to e (before
    # any capacity drop, no gradient), P_e = mean normalised score.
    f = torch.bincount(experts.flatten(), minlength=E).to(x.dtype) / (N * k)
    q = scores / scores.sum(-1, keepdim=True) if sigmoid else scores
    aux = moe["load_balancing_weight"] * E * (f * q.mean(0)).sum()
    if moe["z_loss_weight"]:
        aux = aux + moe["z_loss_weight"] * logits.logsumexp(-1).pow(2).mean()
    return experts, weights, aux


def capacity_keep(experts, num_experts, capacity_factor):
    """Bool [N, k]: which slots survive the per-expert cap. Slots are taken in
    token order (t-major, then j); each expert keeps its first
    ceil(c * N * k / E) and drops the rest."""
    keep = torch.ones(experts.shape, dtype=torch.bool)
    if capacity_factor is None:
        return keep
    N, k = experts.shape
    cap = math.ceil(capacity_factor * N * k / num_experts)
    taken = [0] * num_experts
    for t in range(N):
        for j in range(k):
            e = int(experts[t, j])
            keep[t, j] = taken[e] < cap
            taken[e] += 1
    return keep


def swiglu(x, P, prefix):
    return (F.silu(x @ P[prefix + "w_gate"].T) * (x @ P[prefix + "w_up"].T)) @ P[prefix + "w_down"].T


def moe_layer(x, ids, P, prefix, moe):
    """Returns (y [N, H], aux, dropped slot count)."""
    experts, weights, aux = route(x, ids, P, prefix, moe)
    keep = capacity_keep(experts, moe["num_experts"], moe["capacity_factor"])
    y = torch.zeros_like(x)
    for e in range(moe["num_experts"]):
        tokens, slots = torch.nonzero((experts == e) & keep, as_tuple=True)
        if len(tokens) == 0:
            continue
        out = swiglu(x[tokens], P, f"{prefix}experts.{e}.")
        y = y.index_add(0, tokens, weights[tokens, slots, None] * out)
    # Shared experts, each on its own (the engine runs them fused): every
    # token, weight 1, dropped slots or not.
    n = moe["shared_experts"]
    if n:
        Is = moe["shared_expert_hidden_size"] or moe["expert_hidden_size"]
        w = {name: P[f"{prefix}shared_experts.{name}"] for name in ("w_gate", "w_up", "w_down")}
        for i in range(n):
            rows = slice(i * Is, (i + 1) * Is)
            y = y + (F.silu(x @ w["w_gate"][rows].T) * (x @ w["w_up"][rows].T)) @ w["w_down"][:, rows].T
    return y, aux, int((~keep).sum())


def dynamics(h, v, P, prefix, d):
    H = h.shape[-1]
    z = F.silu(torch.cat([h, v], -1) @ P[prefix + "c1.weight"].T + P[prefix + "c1.bias"])
    a, b, g = (z @ P[prefix + "c2.weight"].T + P[prefix + "c2.bias"]).split(H, dim=-1)
    alpha = torch.sigmoid(a)
    beta = torch.clamp(F.softplus(b), max=d["beta_max"])
    gate = torch.sigmoid(g)
    mu = torch.clamp(P[prefix + "mu"], d["mu_min"], d["mu_max"])
    v_new = torch.clamp(alpha * v - beta * (h - mu), -d["velocity_max"], d["velocity_max"])
    return h + d["dt"] * gate * v_new, v_new


def forward(m, P, inputs, targets):
    """inputs, targets: long [B, T]. Returns (cross_entropy, aux, dropped)."""
    B, T = inputs.shape
    ids = inputs.reshape(-1)
    eps = m["norm_eps"]
    dyn = dynamics_prefixes(m)
    h = P["embed.weight"][ids]
    v = torch.zeros_like(h)
    aux = torch.zeros((), dtype=h.dtype)
    dropped = 0
    for l in range(m["num_layers"]):
        p = f"layers.{l}."
        x = h + attention(rmsnorm(h, P[p + "attn_norm.weight"], eps), P, p + "attn.", m, B, T)
        y, aux_l, dropped_l = moe_layer(rmsnorm(x, P[p + "moe_norm.weight"], eps), ids, P, p + "moe.", m["moe"])
        h = x + y
        aux = aux + aux_l
        dropped += dropped_l
        if dyn:
            h, v = dynamics(h, v, P, dyn[0] if len(dyn) == 1 else dyn[l], m["dynamics"])
    lm_head = P["embed.weight" if m["tie_embeddings"] else "lm_head.weight"]
    logits = rmsnorm(h, P["norm.weight"], eps) @ lm_head.T
    ce = F.cross_entropy(logits, targets.reshape(-1))
    return ce, aux, dropped


# ---------------------------------------------------------------- files

def load_weights(m, path):
    """Float64 leaf tensors (requires_grad) for every parameter in the file;
    the file must hold exactly this model's parameters."""
    tensors, _ = safetensors_io.read(path)
    shapes = parameter_shapes(m)
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing or extra:
        raise ValueError(f"{path}: not this config's parameters (missing {missing[:4]}, unexpected {extra[:4]})")
    P = {}
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{path}: '{name}' has shape {list(tensors[name].shape)}, expected {list(shape)}")
        P[name] = torch.tensor(tensors[name], dtype=torch.float64, requires_grad=not is_state(name))
    return P


def is_state(name):
    """A tensor of the model the optimizer does not train: no gradient."""
    return name.endswith("router.expert_bias")


def load_batch(m, path):
    tensors, _ = safetensors_io.read(path)
    inputs, targets = (torch.tensor(tensors[n].astype(np.int64)) for n in ("inputs", "targets"))
    V = m["vocab_size"]
    for name, t in (("inputs", inputs), ("targets", targets)):
        if t.dim() != 2 or t.min() < 0 or t.max() >= V:
            raise ValueError(f"{path}: '{name}' must be [B, T] with ids in [0, {V})")
    return inputs, targets


def make_inputs(cfg, seed, weights_path, batch_path):
    m = cfg["model"]
    rng = np.random.default_rng(seed)
    safetensors_io.write(weights_path, random_parameters(m, rng))
    B, T = cfg["train"]["micro_batch_size"], cfg["train"]["seq_len"]
    batch = {n: rng.integers(0, m["vocab_size"], size=(B, T)).astype(np.int32) for n in ("inputs", "targets")}
    safetensors_io.write(batch_path, batch)


def gradients(cfg, weights_path, batch_path, out_path):
    m = cfg["model"]
    P = load_weights(m, weights_path)
    inputs, targets = load_batch(m, batch_path)
    ce, aux, dropped = forward(m, P, inputs, targets)
    loss = ce + aux
    loss.backward()
    # A parameter the loss does not reach (the weights of an expert that gets
    # no token) has no autograd gradient: its gradient is zero, as the engine writes it.
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy().astype(np.float32)
             for name, p in P.items() if not is_state(name)}
    meta = {"loss": repr(loss.item()), "cross_entropy": repr(ce.item()), "aux": repr(aux.item()),
            "dropped": str(dropped)}
    safetensors_io.write(out_path, grads, meta)
    return loss.item(), dropped


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True,
                    help="the engine's YAML config (model and train sections), or moe-checkpoint export's config.json")
    ap.add_argument("--weights", required=True, help="parameters, safetensors F32 (written with --make-inputs)")
    ap.add_argument("--batch", required=True, help="'inputs' and 'targets', I32 [B, T] (written with --make-inputs)")
    ap.add_argument("--out", help="where to write the loss and gradients")
    ap.add_argument("--make-inputs", action="store_true",
                    help="write random weights and a random batch (B, T from train.micro_batch_size, train.seq_len)")
    ap.add_argument("--seed", type=int, default=0, help="seed for --make-inputs")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    try:
        cfg = load_config(args.config)
        if args.make_inputs:
            if cfg["train"] is None:
                ap.error("--make-inputs needs train.seq_len and train.micro_batch_size: pass the YAML config")
            make_inputs(cfg, args.seed, args.weights, args.batch)
            return
        if not args.out:
            ap.error("--out is required unless --make-inputs")
        loss, dropped = gradients(cfg, args.weights, args.batch, args.out)
    except (OSError, ValueError) as e:  # a bad file: one line, not a traceback
        sys.exit(f"torch_reference.py: {e}")
    print(f"torch reference: loss {loss:.17g}, {dropped} slots dropped; gradients written to {args.out}")


if __name__ == "__main__":
    main()
