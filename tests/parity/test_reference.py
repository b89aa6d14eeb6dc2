#!/usr/bin/python3
"""Checks tools/torch_reference.py itself before it is trusted as the
reference: its autograd gradients against finite differences, and the
routing rules of MODEL.md (top-k ties, capacity drops, token-id routing,
f_e counted before capacity), zero gradients for an expert without tokens, and
the reading of an exported config.json. Run by tests/parity/run_parity.sh."""

import copy
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import safetensors_io  # noqa: E402
import torch_reference as ref  # noqa: E402

torch.set_default_dtype(torch.float64)


def tiny_model(**moe):
    m = copy.deepcopy(ref.DEFAULTS["model"])
    m.update(vocab_size=11, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=1, qk_norm=True)
    m["moe"].update(num_experts=3, top_k=2, expert_hidden_size=6, load_balancing_weight=0.1, z_loss_weight=0.01)
    m["moe"].update(moe)
    m["dynamics"].update(shared=False, controller_size=4, velocity_max=0.5, beta_max=0.6, mu_max=1.05)
    return m


def leaf_parameters(m, seed):
    rng = np.random.default_rng(seed)
    return {n: torch.tensor(v, dtype=torch.float64, requires_grad=True)
            for n, v in ref.random_parameters(m, rng).items()}


def test_gradients_match_finite_differences():
    for moe in ({}, {"capacity_factor": 0.5, "normalize_top_k": False},
                {"shared_experts": 2, "shared_expert_hidden_size": 4}):
        m = tiny_model(**moe)
        P = leaf_parameters(m, 3)
        names = sorted(P)
        rng = np.random.default_rng(4)
        inputs = torch.tensor(rng.integers(0, m["vocab_size"], size=(2, 4)))
        targets = torch.tensor(rng.integers(0, m["vocab_size"], size=(2, 4)))

        def loss(*values):
            ce, aux, _ = ref.forward(m, dict(zip(names, values)), inputs, targets)
            return ce + aux

        assert torch.autograd.gradcheck(loss, [P[n] for n in names], eps=1e-6, atol=1e-7, rtol=1e-5)


def test_shared_experts_are_one_fused_swiglu_added_with_weight_one():
    # docs/MODEL-OPTIONS.md: n shared experts of inner size I_s, each on its
    # own in the reference, are one SwiGLU of inner size n * I_s (the engine's).
    m = tiny_model(shared_experts=3, shared_expert_hidden_size=5)
    P = leaf_parameters(m, 8)
    x = torch.tensor(np.random.default_rng(9).standard_normal((7, m["hidden_size"])))
    with_shared, _, _ = ref.moe_layer(x, None, P, "layers.0.moe.", m["moe"])
    routed, _, _ = ref.moe_layer(x, None, P, "layers.0.moe.", dict(m["moe"], shared_experts=0))
    fused = ref.swiglu(x, P, "layers.0.moe.shared_experts.")
    assert P["layers.0.moe.shared_experts.w_gate"].shape == (15, m["hidden_size"])
    assert torch.allclose(with_shared, routed + fused, rtol=1e-12, atol=1e-12)
    assert fused.abs().max() > 1e-2


def test_top_k_ties_pick_the_lower_expert():
    moe = copy.deepcopy(ref.DEFAULTS["model"]["moe"])
    moe.update(num_experts=4, top_k=2)
    x = torch.eye(2)
    router = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # token 0: experts 1, 2, 3 tie
    experts, weights, _ = ref.route(x, torch.zeros(2, dtype=torch.long), {"r.router.weight": router}, "r.", moe)
    assert experts.tolist() == [[1, 2], [0, 1]]
    assert torch.allclose(weights, torch.full((2, 2), 0.5))


def test_capacity_drops_later_slots_in_token_order():
    experts = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    # cap = ceil(0.75 * 4 * 2 / 3) = 2: expert 0 keeps (0,0), (1,0); expert 1 keeps (0,1), (2,1).
    keep = ref.capacity_keep(experts, 3, 0.75)
    assert keep.tolist() == [[True, True], [True, True], [False, True], [False, False]]
    assert bool(ref.capacity_keep(experts, 3, None).all())


def test_dropped_slots_add_nothing():
    m = tiny_model(capacity_factor=0.5)
    P = leaf_parameters(m, 5)
    x = torch.randn(6, m["hidden_size"], generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(6, dtype=torch.long)
    y, _, dropped = ref.moe_layer(x, ids, P, "layers.0.moe.", m["moe"])
    experts, weights, _ = ref.route(x, ids, P, "layers.0.moe.", m["moe"])
    keep = ref.capacity_keep(experts, 3, 0.5)  # cap = ceil(0.5 * 12 / 3) = 2
    assert dropped == int((~keep).sum()) > 0
    for t in range(6):  # y is the kept slots' weighted expert outputs, nothing else
        want = sum((weights[t, j] * ref.swiglu(x[t:t + 1], P, f"layers.0.moe.experts.{int(experts[t, j])}.")[0]
                    for j in range(2) if keep[t, j]), torch.zeros(m["hidden_size"]))
        assert torch.allclose(y[t], want)


def test_load_balancing_counts_slots_before_capacity():
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    P = leaf_parameters(tiny_model(), 6)
    auxes = [ref.moe_layer(x, torch.zeros(6, dtype=torch.long), P, "layers.0.moe.", tiny_model(capacity_factor=cf)["moe"])[1]
             for cf in (None, 0.5)]
    assert auxes[0].item() == auxes[1].item()
    moe = tiny_model(z_loss_weight=0.0)["moe"]
    experts, _, aux = ref.route(x, None, P, "layers.0.moe.", moe)
    probs = (x @ P["layers.0.moe.router.weight"].T).softmax(-1)
    f = [float((experts == e).sum()) / 12 for e in range(3)]
    want = 0.1 * 3 * sum(f[e] * probs[:, e].mean() for e in range(3))
    assert math.isclose(aux.item(), want.item(), rel_tol=1e-12)


def test_token_id_router_sends_id_mod_e_with_weight_one():
    moe = tiny_model(router="token_id", top_k=1)["moe"]
    ids = torch.tensor([0, 1, 2, 3, 4, 10])
    experts, weights, aux = ref.route(torch.randn(6, 8), ids, {}, "", moe)
    assert experts.flatten().tolist() == [0, 1, 2, 0, 1, 1]
    assert weights.flatten().tolist() == [1.0] * 6 and aux.item() == 0.0


def test_dynamics_clamps_clip_in_the_per_layer_parity_config():
    """The parity run's dynamics config is meant to exercise every clamp."""
    cfg = ref.load_config(os.path.join(HERE, "configs", "dynamics_per_layer.yaml"))
    clipped = {}
    original = torch.clamp

    def recording_clamp(x, min=None, max=None):
        outside = (min is not None and bool((x < min).any())) or (max is not None and bool((x > max).any()))
        clipped[(min, max)] = clipped.get((min, max), False) or outside
        return original(x, min, max)

    with tempfile.TemporaryDirectory() as tmp:
        w, b = os.path.join(tmp, "w.safetensors"), os.path.join(tmp, "b.safetensors")
        ref.make_inputs(cfg, int(os.environ.get("PARITY_SEED", "7")), w, b)
        P = ref.load_weights(cfg["model"], w)
        inputs, targets = ref.load_batch(cfg["model"], b)
        torch.clamp = recording_clamp
        try:
            ref.forward(cfg["model"], P, inputs, targets)
        finally:
            torch.clamp = original
    assert set(clipped) == {(None, 0.6), (0.0, 1.05), (-0.5, 0.5)}, clipped
    assert all(clipped.values()), clipped


def exported_config(m):
    """A config.json as `moe-checkpoint export` writes it (tools/checkpoint_tool.cpp)."""
    return {"architecture": "moe-inl", "format_version": 1, **copy.deepcopy(m)}


def test_exported_config_json_gives_its_model():
    m = tiny_model(capacity_factor=0.5)
    m.update(rope_theta=500, norm_eps=1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.json")
        with open(path, "w") as f:
            json.dump(exported_config(m), f)
        cfg = ref.load_config(path)
    assert cfg["model"] == m and cfg["train"] is None


def test_exported_config_json_with_a_missing_or_unknown_key_is_refused():
    cases = []
    for section, key in ((None, "rope_theta"), ("moe", "capacity_factor"), ("dynamics", "dt")):
        given = exported_config(tiny_model())
        del (given[section] if section else given)[key]
        cases.append((given, f"missing key '{section + '.' if section else ''}{key}'"))
    given = exported_config(tiny_model())
    given["moe"]["top_p"] = 0.9
    cases.append((given, "unknown key 'moe.top_p'"))
    given = exported_config(tiny_model())
    given["format_version"] = 2
    cases.append((given, "not a config.json of moe-checkpoint export"))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.json")
        for given, message in cases:
            with open(path, "w") as f:
                json.dump(given, f)
            try:
                ref.load_config(path)
            except ValueError as e:
                assert str(e).startswith(f"{path}: {message}"), str(e)
            else:
                raise AssertionError(f"accepted a config.json with {message}")


def test_an_expert_without_tokens_gets_zero_gradients():
    cfg = {"model": tiny_model(router="token_id", top_k=1), "train": {"seq_len": 4, "micro_batch_size": 2}}
    with tempfile.TemporaryDirectory() as tmp:
        w, b, g = (os.path.join(tmp, n) for n in ("w.safetensors", "b.safetensors", "g.safetensors"))
        ref.make_inputs(cfg, 1, w, b)
        # ids 0, 1, 3, 4 (mod 3: 0, 1, 0, 1): expert 2 gets no token
        batch = {"inputs": np.array([[0, 1, 3, 4], [4, 3, 1, 0]], dtype=np.int32),
                 "targets": np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32)}
        safetensors_io.write(b, batch)
        ref.gradients(cfg, w, b, g)
        grads, _ = safetensors_io.read(g)
    for l in range(2):
        for e in range(3):
            for kind in ("w_gate", "w_up", "w_down"):
                assert bool(np.any(grads[f"layers.{l}.moe.experts.{e}.{kind}"])) == (e != 2), (l, e, kind)


def test_safetensors_round_trip():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([[1, -2]], dtype=np.int32)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.safetensors")
        safetensors_io.write(path, tensors, {"loss": "1.5"})
        back, meta = safetensors_io.read(path)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
    assert meta == {"loss": "1.5"} and header_len % 8 == 0
    assert set(back) == {"a", "b"}
    for n in tensors:
        assert back[n].dtype == tensors[n].dtype and np.array_equal(back[n], tensors[n])


def main():
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_")]
    for name, fn in tests:
        fn()
        print(f"ok {name}")
    print(f"{len(tests)} reference checks passed")


if __name__ == "__main__":
    main()
