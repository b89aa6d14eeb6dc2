#!/usr/bin/env python3
"""Fault injection: bad input of every kind against the programs, each run
judged as clean, crashed, hung or silently wrong.

  tests/faults/inject.py BUILD_DIR [--quick] [--only CATEGORY]... [--verbose] [--keep]

Categories: config, shards, checkpoint, mpi, disk, tools, tokenizer, signals. A fault is
*clean* when the program either refuses it with one line naming the problem
(exit code not 0, no crash, no stack trace) or, where the input is in fact
valid, does the right thing (checked: the run trains, a resume gives the
losses of a run that never stopped, files stay parseable). *crashed*: killed
by a signal, an abort, an uncaught exception. *hung*: still running at its
time limit. *silently wrong*: exit 0 with a wrong result, or a valid input
refused. Prints a table per category and every fault that was not clean;
exits 1 if there is one. Needs only Python's standard library; mpirun for
the mpi category; spm_train and a build with SentencePiece for the tokenizer
category (skipped, saying so, without them).
"""

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zlib

CRASH_MARKERS = ("terminate called", "Segmentation fault", "core dumped", "std::bad_alloc", "Aborted",
                 "double free", "stack smashing", "AddressSanitizer")


class Result:
    def __init__(self, rc, out, timed_out, seconds):
        self.rc, self.out, self.timed_out, self.seconds = rc, out, timed_out, seconds


def run(cmd, timeout=60, env=None, cwd=None, stdin=subprocess.DEVNULL, preexec=None):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    full_env.update(env or {})
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                            stdin=stdin, preexec_fn=preexec, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return Result(proc.returncode, out.decode("utf-8", "replace"), False, time.time() - start)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return Result(None, out.decode("utf-8", "replace"), True, time.time() - start)


def crashed(r):
    if r.rc is not None and (r.rc < 0 or r.rc in (134, 136, 139)):
        return True
    return any(m in r.out for m in CRASH_MARKERS)


def clear_refusal(r, program):
    """A nonzero exit whose output names the problem on a line of the program."""
    if r.rc in (0, None):
        return False
    lines = [l for l in r.out.splitlines() if l.startswith(program + ":")]
    return bool(lines) and all(len(l) < 1500 for l in lines)


class Harness:
    def __init__(self, build, src, keep, quick):
        self.build, self.src, self.keep, self.quick = build, src, keep, quick
        self.work = tempfile.mkdtemp(prefix="moe-faults-")
        self.results = {}  # category -> list of (name, verdict, detail)
        self.counter = 0

    def bin(self, name):
        return os.path.join(self.build, name)

    def fresh(self, name):
        self.counter += 1
        d = os.path.join(self.work, "%03d-%s" % (self.counter, name))
        os.makedirs(d)
        return d

    def record(self, category, name, verdict, detail=""):
        self.results.setdefault(category, []).append((name, verdict, detail))

    def judge(self, category, name, r, expect, program="moe-train", check=None):
        """expect: 'refuse' (a clear refusal is clean), 'accept' (exit 0 and check()
        true), or 'either' (a clear refusal, or exit 0 with check() true)."""
        if r.timed_out:
            verdict = "hung"
        elif crashed(r):
            verdict = "crashed"
        elif expect == "stops":  # any clean end of the job is right (a rank died: the launcher says which)
            verdict = "clean" if r.rc != 0 else "silently wrong"
        elif r.rc == 0:
            ok = expect != "refuse" and (check is None or check())
            verdict = "clean" if ok else "silently wrong"
        else:
            verdict = "clean" if expect != "accept" and clear_refusal(r, program) else \
                ("silently wrong" if expect == "accept" else "unclear")
        last = [l for l in r.out.strip().splitlines() if l.strip()][-1:] or [""]
        self.record(category, name, verdict, "exit %s in %.1f s: %s" % (r.rc, r.seconds, last[0][:300]))
        return verdict

    # ---- fixtures ---------------------------------------------------------------------------------

    def setup(self):
        self.data = os.path.join(self.work, "data")
        texts = [os.path.join(self.src, "README.md")]
        for root, _, files in os.walk(os.path.join(self.src, "engine")):
            texts += [os.path.join(root, f) for f in sorted(files) if f.endswith(".cpp")]
        r = run([self.bin("moe-shards"), "--out", self.data, "--val-every", "10"] + texts)
        if r.rc != 0:
            sys.exit("inject: cannot make the data: " + r.out)
        self.config = os.path.join(self.work, "base.yaml")
        with open(self.config, "w") as f:
            f.write("model:\n  vocab_size: 256\n  hidden_size: 64\n  num_layers: 2\n  num_heads: 4\n"
                    "  num_kv_heads: 2\n  moe:\n    num_experts: 4\n    top_k: 2\n    expert_hidden_size: 128\n"
                    "  dynamics:\n    controller_size: 32\n"
                    "data:\n  train: %s/train_*.bin\n  val: %s/val_*.bin\n"
                    "train:\n  seq_len: 32\n  micro_batch_size: 2\n  steps: 6\n"
                    "optimizer:\n  lr: 3.0e-3\n  min_lr: 3.0e-4\n  warmup_steps: 2\n"
                    "eval:\n  every: 0\n  batches: 2\nlog:\n  every: 1\n"
                    "run:\n  seed: 1234\n  device: cpu\n" % (self.data, self.data))
        # A finished run with checkpoints at steps 3 and 6, and its losses.
        self.base_run = os.path.join(self.work, "base-run")
        r = self.train(self.base_run, ["--set", "checkpoint.every=3", "--set", "checkpoint.keep=5"])
        if r.rc != 0:
            sys.exit("inject: the base run failed: " + r.out)
        self.reference = self.losses(self.base_run)
        if len(self.reference) != 6:
            sys.exit("inject: the base run has %d losses" % len(self.reference))

    def train(self, out_dir, extra=(), timeout=60, env=None, preexec=None, config=None):
        return run([self.bin("moe-train"), "--config", config or self.config, "--set", "run.out_dir=" + out_dir]
                   + list(extra), timeout=timeout, env=env, preexec=preexec)

    @staticmethod
    def losses(run_dir):
        out = {}
        try:
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                for line in f:
                    d = json.loads(line)
                    if "loss" in d:
                        out[int(d["step"])] = d["loss"]
        except (OSError, ValueError):
            return None
        return out

    def metrics_parse(self, run_dir):
        path = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.exists(path):
            return True
        try:
            with open(path) as f:
                text = f.read()
            for line in text.splitlines():
                if line.strip():
                    json.loads(line)
            return text == "" or text.endswith("\n")
        except ValueError:
            return False

    def copy_base(self, name):
        return self.copy_of(self.base_run, name)

    def copy_of(self, run_dir, name):
        d = self.fresh(name)
        shutil.copytree(run_dir, os.path.join(d, "run"), symlinks=True)
        return os.path.join(d, "run")

    def resumes_exactly(self, run_dir):
        """The run's losses equal the reference's at every step it logged."""
        got = self.losses(run_dir)
        return got is not None and len(got) > 0 and all(self.reference.get(s) == v for s, v in got.items())

    def valid_checkpoints(self, run_dir):
        r = run([self.bin("moe-checkpoint"), "inspect", run_dir], timeout=60)
        return r.rc == 0

    # ---- categories -------------------------------------------------------------------------------

    def configs(self):
        cat = "config"
        keys_int = ["model.vocab_size", "model.hidden_size", "model.num_layers", "model.num_heads",
                    "model.moe.num_experts", "model.moe.top_k", "train.seq_len", "train.micro_batch_size",
                    "train.steps", "eval.batches", "log.every", "run.threads", "parallel.expert_parallel",
                    "model.moe.shared_experts", "model.moe.shared_expert_hidden_size"]
        keys_float = ["optimizer.lr", "optimizer.beta2", "model.moe.capacity_factor", "model.dynamics.dt",
                      "parallel.collective_timeout_s", "model.norm_eps", "model.moe.expert_bias_rate"]
        bad_values = ["-1", "0x10", "1e400", "nan", ".inf", "[1, 2]", "{a: 1}", "abc", "", "99999999999999999999"]
        int_values = bad_values + ["0", "100000", "2147483647"]
        float_values = bad_values + ["1e-30", "1e30"]
        if self.quick:  # the values that found faults, and one of each kind
            int_values, float_values = ["-1", "0x10", "[1, 2]", "100000", "2147483647"], ["nan", "0x1p-4", "1e30"]
        for key in keys_int:
            for v in int_values:
                name = "--set %s=%s" % (key, v)
                d = self.fresh("cfg")
                r = self.train(d, ["--set", "%s=%s" % (key, v), "--set", "train.steps=1", "--set",
                                   "optimizer.warmup_steps=0"], timeout=60)
                self.judge(cat, name, r, "either", check=lambda d=d: self.metrics_parse(d))
        for key in keys_float:
            for v in float_values:
                d = self.fresh("cfg")
                r = self.train(d, ["--set", "%s=%s" % (key, v), "--set", "train.steps=1", "--set",
                                   "optimizer.warmup_steps=0"], timeout=60)
                self.judge(cat, "--set %s=%s" % (key, v), r, "either", check=lambda d=d: self.metrics_parse(d))
        # Whole files.
        d = self.fresh("cfgfiles")
        cases = {
            "empty file": b"",
            "binary garbage": os.urandom(4096),
            "not a mapping": b"- 1\n- 2\n",
            "truncated": open(self.config, "rb").read()[:300],
            "duplicate key": open(self.config, "rb").read() + b"\ntrain:\n  steps: 3\n",
            "unknown section": open(self.config, "rb").read() + b"\nextra:\n  x: 1\n",
            "deep nesting": b"model: " + b"[" * 5000 + b"]" * 5000 + b"\n",
            "long line": b"data:\n  train: " + b"x" * 5000000 + b"\n",
            "invalid utf-8": open(self.config, "rb").read().replace(b"cpu", b"c\xff\xfeu"),
            "tab indentation": b"model:\n\tvocab_size: 256\n",
        }
        for name, content in cases.items():
            path = os.path.join(d, name.replace(" ", "_") + ".yaml")
            with open(path, "wb") as f:
                f.write(content)
            r = self.train(os.path.join(d, "run-" + name.replace(" ", "_")), config=path, timeout=60)
            self.judge(cat, "config file: " + name, r, "refuse")
        fifo = os.path.join(d, "fifo.yaml")
        os.mkfifo(fifo)
        for name, path in (("a FIFO", fifo), ("/dev/zero", "/dev/zero"), ("a directory", d),
                           ("missing", os.path.join(d, "nope.yaml"))):
            r = self.train(os.path.join(d, "run-x"), config=path, timeout=30)
            self.judge(cat, "config file: " + name, r, "refuse")

    def shards(self):
        cat = "shards"
        src_shard = os.path.join(self.data, "train_000000.bin")
        raw = open(src_shard, "rb").read()
        header = bytearray(raw[:1024])

        def with_header(**fields):
            h = bytearray(header)
            for index, value in fields.items():
                i = int(index[1:])
                h[4 * i:4 * i + 4] = int(value).to_bytes(4, "little", signed=True)
            return bytes(h)

        cases = {
            "truncated": raw[: len(raw) // 2],
            "header only": raw[:1024],
            "shorter than a header": raw[:100],
            "empty": b"",
            "bad magic": with_header(i0=12345) + raw[1024:],
            "version 9": with_header(i1=9) + raw[1024:],
            "negative count": with_header(i2=-5) + raw[1024:],
            "count too large": with_header(i2=2 ** 31 - 1) + raw[1024:],
            "tokens past the vocabulary": raw[:1024] + (65535).to_bytes(2, "little") * ((len(raw) - 1024) // 2),
            "appended garbage": raw + b"\x00" * 1000,
        }
        for name, content in cases.items():
            d = self.fresh("shard")
            with open(os.path.join(d, "train_000000.bin"), "wb") as f:
                f.write(content)
            r = self.train(os.path.join(d, "run"), ["--set", "data.train=%s/train_*.bin" % d], timeout=60)
            self.judge(cat, "shard " + name, r, "refuse")
        special = {}
        d = self.fresh("shard-special")
        os.mkfifo(os.path.join(d, "fifo_000000.bin"))
        special["a FIFO"] = os.path.join(d, "fifo_*.bin")
        os.makedirs(os.path.join(d, "dir_000000.bin"))
        special["a directory"] = os.path.join(d, "dir_*.bin")
        os.symlink(os.path.join(d, "loop_000000.bin"), os.path.join(d, "loop_000000.bin"))
        special["a symlink loop"] = os.path.join(d, "loop_*.bin")
        os.symlink("/nonexistent/x.bin", os.path.join(d, "dangling_000000.bin"))
        special["a dangling link"] = os.path.join(d, "dangling_*.bin")
        special["no match"] = os.path.join(d, "none_*.bin")
        special["/dev/zero"] = "/dev/zero"
        for name, glob in special.items():
            r = self.train(os.path.join(d, "run-" + name.replace(" ", "_")), ["--set", "data.train=" + glob],
                           timeout=30)
            self.judge(cat, "shard: " + name, r, "refuse")
        # Validation shards and moe-shards' own input.
        d = self.fresh("val")
        with open(os.path.join(d, "val_000000.bin"), "wb") as f:
            f.write(raw[:500])
        r = self.train(os.path.join(d, "run"), ["--set", "data.val=%s/val_*.bin" % d])
        self.judge(cat, "validation shard truncated", r, "refuse")

    def checkpoints(self):
        cat = "checkpoint"
        root = lambda run_dir: os.path.join(run_dir, "checkpoints")
        step = lambda run_dir, n: os.path.join(root(run_dir), "step-%08d" % n)

        def resume(run_dir, extra=(), steps=9, timeout=60):
            return self.train(run_dir, ["--resume", "auto", "--set", "train.steps=%d" % steps,
                                        "--set", "checkpoint.every=3"] + list(extra), timeout=timeout)

        def flip(path, at):
            with open(path, "r+b") as f:
                f.seek(at)
                b = f.read(1)
                f.seek(at)
                f.write(bytes([b[0] ^ 0x5A]))

        def edit_yaml(path, old, new):
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(text.replace(old, new, 1))

        def back_to_step3(run_dir):
            """The run as it was after step 3: resumed, it must give the reference losses."""
            shutil.rmtree(step(run_dir, 6))
            with open(os.path.join(root(run_dir), "latest"), "w") as f:
                f.write("step-00000003\n")
            lines = [l for l in open(os.path.join(run_dir, "metrics.jsonl")) if json.loads(l)["step"] <= 3]
            with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
                f.writelines(lines)

        model6 = lambda run_dir: os.path.join(step(run_dir, 6), "model-00000-of-00001.safetensors")
        # Damage to the newest checkpoint: refused, or the older one used.
        damage = {
            "a flipped byte in the model part": lambda r: flip(model6(r), os.path.getsize(model6(r)) // 2),
            "a flipped byte in the safetensors header": lambda r: flip(model6(r), 20),
            "a truncated model part": lambda r: os.truncate(model6(r), 1000),
            "an empty optimizer part": lambda r: os.truncate(os.path.join(step(r, 6),
                                                                          "optimizer-00000-of-00001.safetensors"), 0),
            "a missing optimizer part": lambda r: os.remove(os.path.join(step(r, 6),
                                                                         "optimizer-00000-of-00001.safetensors")),
            "checkpoint.yaml: step edited": lambda r: edit_yaml(os.path.join(step(r, 6), "checkpoint.yaml"),
                                                                "step: 6", "step: 5"),
            "checkpoint.yaml: cursor edited": lambda r: edit_yaml(os.path.join(step(r, 6), "checkpoint.yaml"),
                                                                  "cursor: 12", "cursor: 2"),
            "checkpoint.yaml: step -5": lambda r: edit_yaml(os.path.join(step(r, 6), "checkpoint.yaml"),
                                                            "step: 6", "step: -5"),
            "checkpoint.yaml: garbage": lambda r: open(os.path.join(step(r, 6), "checkpoint.yaml"), "wb").write(
                os.urandom(2000)),
            "checkpoint.yaml: cut short": lambda r: os.truncate(os.path.join(step(r, 6), "checkpoint.yaml"), 200),
            "checkpoint.yaml: a FIFO": lambda r: (os.remove(os.path.join(step(r, 6), "checkpoint.yaml")),
                                                  os.mkfifo(os.path.join(step(r, 6), "checkpoint.yaml"))),
            "model part a directory": lambda r: (os.remove(model6(r)), os.makedirs(model6(r))),
        }
        for name, hurt in damage.items():
            run_dir = self.copy_base("ckpt")
            hurt(run_dir)
            r = resume(run_dir)
            self.judge(cat, "resume --auto, newest checkpoint with " + name, r, "refuse")
            run_dir = self.copy_base("ckpt-dir")
            hurt(run_dir)
            r = run([self.bin("moe-checkpoint"), "inspect", step(run_dir, 6)], timeout=60)
            self.judge(cat, "moe-checkpoint inspect with " + name, r, "refuse", program="moe-checkpoint")
        # Damage that leaves a complete older checkpoint: resume from it, exactly.
        benign = {
            "latest garbage": lambda r: open(os.path.join(root(r), "latest"), "wb").write(os.urandom(300)),
            "latest naming a missing step": lambda r: open(os.path.join(root(r), "latest"), "w").write(
                "step-00000099\n"),
            "latest a FIFO": lambda r: (os.remove(os.path.join(root(r), "latest")),
                                        os.mkfifo(os.path.join(root(r), "latest"))),
            "latest missing": lambda r: os.remove(os.path.join(root(r), "latest")),
            "a stale step-N.tmp": lambda r: os.makedirs(step(r, 9) + ".tmp"),
            "step-6 without checkpoint.yaml": lambda r: os.remove(os.path.join(step(r, 6), "checkpoint.yaml")),
            "a dangling link step-9": lambda r: os.symlink("/nonexistent", step(r, 9)),
            "a file named step-9": lambda r: open(step(r, 9), "w").write("x"),
            "a huge step number directory": lambda r: os.makedirs(os.path.join(root(r), "step-99999999999999")),
            "a dangling link where step-6 goes": lambda r: os.symlink("/nonexistent", step(r, 6)),
            "a directory without checkpoint.yaml where step-6 goes": lambda r: os.makedirs(step(r, 6)),
        }
        for name, hurt in benign.items():
            run_dir = self.copy_base("ckpt-benign")
            back_to_step3(run_dir) if name != "step-6 without checkpoint.yaml" else None
            hurt(run_dir)
            if name == "step-6 without checkpoint.yaml":
                lines = [l for l in open(os.path.join(run_dir, "metrics.jsonl")) if json.loads(l)["step"] <= 3]
                open(os.path.join(run_dir, "metrics.jsonl"), "w").writelines(lines)
            r = resume(run_dir, steps=6)
            self.judge(cat, "resume with " + name, r, "accept",
                       check=lambda d=run_dir: self.resumes_exactly(d) and len(self.losses(d)) == 6
                       and self.valid_checkpoints(d))
        # Settings that change on resume.
        changed = {
            "run.seed=7": "refuse", "train.seq_len=16": "refuse", "model.hidden_size=128": "refuse",
            "model.moe.num_experts=8": "refuse", "data.train=%s/val_*.bin" % self.data: "refuse",
            "optimizer.lr=0.001": "accept", "train.micro_batch_size=4": "accept", "train.grad_accum_steps=2": "accept",
            "log.every=2": "accept", "checkpoint.keep=1": "accept",
        }
        for setting, expect in changed.items():
            run_dir = self.copy_base("ckpt-change")
            r = resume(run_dir, ["--set", setting])
            self.judge(cat, "resume with --set " + setting, r, expect,
                       check=lambda d=run_dir: self.valid_checkpoints(d) and self.metrics_parse(d))
        # A fresh start over checkpoints, --resume of a foreign directory.
        run_dir = self.copy_base("ckpt-fresh")
        r = self.train(run_dir)
        self.judge(cat, "fresh start in a run directory with checkpoints", r, "refuse")
        for name, target in (("a file", self.config), ("a shard directory", self.data), ("missing", "/nonexistent")):
            r = self.train(self.fresh("ckpt-foreign"), ["--resume", target])
            self.judge(cat, "--resume " + name, r, "refuse")

    def mpi(self):
        cat = "mpi"
        if not shutil.which("mpirun"):
            return
        train = [self.bin("moe-train"), "--config", self.config]
        mpirun = ["mpirun", "--bind-to", "none"]

        def job(name, cmd, expect="refuse", timeout=90, check=None):
            r = run(cmd, timeout=timeout)
            return self.judge(cat, name, r, expect, check=check)

        out = lambda: ["--set", "run.out_dir=" + self.fresh("mpi")]
        job("ep 4 on 2 ranks", mpirun + ["-np", "2"] + train + out() + ["--set", "parallel.expert_parallel=4"])
        job("ep 3 with 4 experts on 3 ranks", mpirun + ["-np", "3"] + train + out() +
            ["--set", "parallel.expert_parallel=3"])
        o = out()
        job("--set on one rank", mpirun + ["-np", "1"] + train + o + [":", "-np", "1"] + train + o +
            ["--set", "train.steps=5"])
        job("--help on one rank", mpirun + ["-np", "1"] + train + o + [":", "-np", "1", train[0], "--help"])
        job("--batch/--dump-grads on one rank", mpirun + ["-np", "1"] + train + o + [":", "-np", "1"] + train + o +
            ["--batch", "b", "--dump-grads", "g"])
        job("--init-from on one rank", mpirun + ["-np", "1"] + train + o + [":", "-np", "1"] + train + o +
            ["--init-from", "w.safetensors"])
        job("--resume on one rank", mpirun + ["-np", "1"] + train + o + [":", "-np", "1"] + train + o +
            ["--resume", "auto"])
        job("unknown option on one rank", mpirun + ["-np", "1"] + train + o + [":", "-np", "1"] + train + o +
            ["--bogus"])
        job("a config one rank cannot read", mpirun + ["-np", "1"] + train + o + [":", "-np", "1", train[0],
                                                                                   "--config", "/nonexistent"] + o)
        # Other data on one rank: relative paths resolved in other folders.
        d = self.fresh("mpi-data")
        for sub, n in (("a", 1), ("b", 2)):
            os.makedirs(os.path.join(d, sub, "data"))
            for i in range(n):
                shutil.copy(os.path.join(self.data, "train_000000.bin"),
                            os.path.join(d, sub, "data", "train_%06d.bin" % i))
        rel = ["--set", "data.train=data/train_*.bin", "--set", "data.val="] + o
        job("other shards at the same path on one rank", mpirun + ["-np", "1", "-wdir", os.path.join(d, "a")] +
            train + rel + [":", "-np", "1", "-wdir", os.path.join(d, "b")] + train + rel)
        # A rank that dies, one that stops.
        for name, sig in (("a rank killed (SIGKILL) mid-run", signal.SIGKILL),
                          ("a rank stopped (SIGSTOP) mid-run", signal.SIGSTOP)):
            run_dir = self.fresh("mpi-die")
            log = open(os.path.join(run_dir, "log"), "w")
            env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
            start = time.time()
            proc = subprocess.Popen(mpirun + ["-np", "2"] + train + ["--set", "run.out_dir=" + run_dir, "--set",
                                                                     "train.steps=100000", "--set",
                                                                     "parallel.expert_parallel=2", "--set",
                                                                     "parallel.collective_timeout_s=5", "--set",
                                                                     "eval.every=0", "--set", "checkpoint.every=0"],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            victim = None
            for _ in range(300):
                time.sleep(0.1)
                if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and \
                        os.path.getsize(os.path.join(run_dir, "metrics.jsonl")) > 200:
                    for child in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                text=True).stdout.split():
                        try:
                            if b"OMPI_COMM_WORLD_RANK=1" in open("/proc/%s/environ" % child, "rb").read().split(b"\0"):
                                victim = int(child)
                        except OSError:
                            pass
                    break
            if victim:
                os.kill(victim, sig)
            try:
                proc.wait(timeout=60)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                timed_out = True
            if victim:
                try:
                    os.kill(victim, signal.SIGKILL)
                except OSError:
                    pass
            log.close()
            r = Result(proc.returncode, open(os.path.join(run_dir, "log")).read(), timed_out, time.time() - start)
            if victim is None:
                self.record(cat, name, "unclear", "rank 1 not found")
            else:
                self.judge(cat, name, r, "refuse" if sig == signal.SIGSTOP else "stops")

    def disk(self):
        cat = "disk"
        # A full disk: the run directory on a tmpfs of N bytes (ENOSPC), for root; the files of the
        # process limited otherwise (EFBIG, set after MPI's start, which needs its own files).
        for size in (4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20):
            run_dir = self.fresh("disk")
            if os.geteuid() != 0:
                print("inject: not root: no full-disk faults (a tmpfs of N bytes is mounted for them)")
                break
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", run_dir]).returncode != 0:
                self.record(cat, "run directory on a %d-byte disk" % size, "unclear", "cannot mount a tmpfs")
                continue
            try:
                r = self.train(run_dir, ["--set", "checkpoint.every=2", "--set", "train.steps=8"])
                verdict = self.judge(cat, "run directory on a %d-byte disk" % size, r, "either",
                                     check=lambda d=run_dir: self.metrics_parse(d))
                if verdict == "clean" and not self.metrics_parse(run_dir):
                    self.results[cat][-1] = (self.results[cat][-1][0], "silently wrong", "metrics.jsonl does not parse")
                ckpts = os.path.join(run_dir, "checkpoints")
                complete = [e for e in (os.listdir(ckpts) if os.path.isdir(ckpts) else [])
                            if e.startswith("step-") and os.path.exists(os.path.join(ckpts, e, "checkpoint.yaml"))]
                if complete and not self.valid_checkpoints(run_dir):
                    self.results[cat][-1] = (self.results[cat][-1][0], "silently wrong", "no valid checkpoint left")
            finally:
                subprocess.run(["umount", run_dir])
        # Resume after a full disk: the file is cut back to the checkpoint and still parses.
        run_dir = self.copy_base("disk-resume")
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
            f.write('{"step": 7, "loss": 2.')
        r = self.train(run_dir, ["--resume", "auto", "--set", "train.steps=9", "--set", "checkpoint.every=3"])
        self.judge(cat, "resume over a metrics line cut by a full disk", r, "accept",
                   check=lambda: self.metrics_parse(run_dir))
        # A run directory that cannot be written.
        blocker = os.path.join(self.fresh("disk-ro"), "file")
        open(blocker, "w").write("x")
        r = self.train(os.path.join(blocker, "run"))
        self.judge(cat, "run.out_dir inside a file", r, "refuse")
        run_dir = self.fresh("disk-ckdir")
        open(os.path.join(run_dir, "checkpoints"), "w").write("x")
        r = self.train(run_dir)
        self.judge(cat, "checkpoints/ is a file", r, "refuse")

    def tools(self):
        cat = "tools"
        d = self.fresh("tools")
        bad_metrics = os.path.join(d, "bad")
        os.makedirs(bad_metrics)
        open(os.path.join(bad_metrics, "metrics.jsonl"), "wb").write(os.urandom(3000))
        fifo_run = os.path.join(d, "fifo")
        os.makedirs(fifo_run)
        os.mkfifo(os.path.join(fifo_run, "metrics.jsonl"))
        cases = [
            ("moe-plot", [bad_metrics], "refuse"),
            ("moe-plot", [fifo_run], "refuse"),
            ("moe-plot", ["/nonexistent"], "refuse"),
            ("moe-plot", [self.base_run, "--size", "5x5"], "refuse"),
            ("moe-plot", [self.base_run, "--smooth", "-3"], "refuse"),
            ("moe-plot", [self.base_run, "-o", os.path.join(d, "x", "y.png")], "refuse"),
            ("moe-plot", [self.base_run, "-o", os.path.join(d, "ok.png")], "accept"),
            ("moe-checkpoint", ["inspect", "/nonexistent"], "refuse"),
            ("moe-checkpoint", ["inspect", self.data], "refuse"),
            ("moe-checkpoint", ["export", self.base_run], "refuse"),
            ("moe-checkpoint", ["export", self.base_run, "--out", os.path.join(d, "exp")], "accept"),
            ("moe-checkpoint", ["frobnicate"], "refuse"),
            ("moe-checkpoint", [], "refuse"),
            ("moe-generate", [self.base_run, "--tokens", "-5"], "refuse"),
            ("moe-generate", [self.base_run, "--temperature", "nan"], "refuse"),
            ("moe-generate", [self.base_run, "--top-k", "0"], "refuse"),
            ("moe-generate", [self.base_run, "--prompt", "x", "--tokens", "5"], "accept"),
            ("moe-generate", [self.base_run, "--prompt", "x", "--top-p", "0"], "refuse"),
            ("moe-generate", [self.base_run, "--prompt", "x", "--top-p", "nan"], "refuse"),
            ("moe-generate", [self.base_run, "--prompt", "x", "--device", "cuda", "--tokens", "2"], "either"),
            ("moe-generate", [self.base_run, "--prompt", "x" * 100, "--tokens", "70", "--top-p", "0.9"], "accept"),
            ("moe-generate", ["/nonexistent"], "refuse"),
            ("moe-shards", ["--out", os.path.join(d, "s"), "/nonexistent"], "refuse"),
            ("moe-shards", ["--out", os.path.join(d, "s2"), "--version", "3", self.config], "refuse"),
            ("moe-shards", ["--out", os.path.join(d, "s3"), "--chunk", "0", self.config], "refuse"),
            ("moe-shards", ["--out", self.config, self.config], "refuse"),
            ("moe-bench", ["--config", self.config, "--steps", "0"], "refuse"),
            ("moe-bench", ["--config", "/dev/zero"], "refuse"),
            ("moe-bench", ["--config", self.config, "--set", "run.threads=100000"], "refuse"),
            ("moe-opbench", ["--config", self.config, "--reps", "-1"], "refuse"),
            ("moe-train", ["--config"], "refuse"),
            ("moe-train", ["--config", self.config, "--dtype", "f16"], "refuse"),
            ("moe-train", ["--config", self.config, "--batch", "/nonexistent", "--dump-grads", os.path.join(d, "g")],
             "refuse"),
        ]
        for program, args, expect in cases:
            r = run([self.bin(program)] + args, timeout=60)
            self.judge(cat, program + " " + " ".join(a.replace(self.work, "W") for a in args), r, expect,
                       program=program)

    def spm_model(self, d, name, model_type):
        """A SentencePiece model of 400 tokens trained on the README, or None (with the reason printed)."""
        r = run(["spm_train", "--input=" + os.path.join(self.src, "README.md"),
                 "--model_prefix=" + os.path.join(d, name), "--model_type=" + model_type, "--vocab_size=400",
                 "--normalization_rule_name=identity", "--byte_fallback=true", "--character_coverage=1.0",
                 "--num_threads=1", "--minloglevel=2"])
        if r.rc != 0:
            print("inject: tokenizer: spm_train failed, no tokenizer faults: " + r.out[-300:])
            return None
        return os.path.join(d, name + ".model")

    def tokenizer(self):
        """SentencePiece models and the records beside shards: bad model files, models that do not match the
        vocabulary, the shards or the weights, damaged records; each refused in one line, or, where valid (a model
        file moved), the run resumes."""
        cat = "tokenizer"
        if not shutil.which("spm_train"):
            print("inject: tokenizer: spm_train is missing (Debian's sentencepiece): no tokenizer faults")
            return
        d = self.fresh("tokenizer")
        a, b = self.spm_model(d, "a", "bpe"), self.spm_model(d, "b", "unigram")
        if not (a and b):
            return
        texts = [os.path.join(self.src, "README.md")]
        shards = lambda name, model: run([self.bin("moe-shards"), "--out", os.path.join(d, name), "--tokenizer", model,
                                          "--val-every", "10"] + texts)
        r = shards("shards-a", a)
        if "lacks SentencePiece" in r.out:
            print("inject: tokenizer: this build lacks SentencePiece: no tokenizer faults")
            return
        if r.rc != 0 or shards("shards-b", b).rc != 0:
            self.record(cat, "moe-shards --tokenizer", "unclear", r.out[-300:])
            return
        on = lambda name, model: ["--set", "model.vocab_size=400", "--set", "data.train=%s/%s/train_*.bin" % (d, name),
                                  "--set", "data.val=%s/%s/val_*.bin" % (d, name), "--set", "data.tokenizer=" + model,
                                  "--set", "eval.every=2"]
        run_a = os.path.join(d, "run-a")
        r = self.train(run_a, on("shards-a", a) + ["--set", "train.steps=4"])
        self.judge(cat, "a run on shards of its model", r, "accept",
                   check=lambda: self.metrics_parse(run_a) and '"val_bpb"' in open(os.path.join(run_a,
                                                                                         "metrics.jsonl")).read())
        garbage, empty, truncated, flipped = (os.path.join(d, n) for n in ("garbage.model", "empty.model", "cut.model",
                                                                            "flipped.model"))
        open(garbage, "wb").write(os.urandom(3000))
        open(empty, "wb").close()
        model_bytes = open(a, "rb").read()
        half = len(model_bytes) // 2
        open(truncated, "wb").write(model_bytes[:half])
        open(flipped, "wb").write(model_bytes[:half] + bytes([model_bytes[half] ^ 0x5A]) + model_bytes[half + 1:])
        os.mkfifo(os.path.join(d, "fifo.model"))
        bad_models = {"missing": os.path.join(d, "none.model"), "random bytes": garbage, "empty": empty,
                      "cut in half": truncated, "a flipped byte": flipped, "a directory": d,
                      "a FIFO": os.path.join(d, "fifo.model"), "/dev/zero": "/dev/zero",
                      "of another kind, same vocabulary": b}
        for name, model in bad_models.items():
            r = self.train(self.fresh("tok-run"), on("shards-a", model), timeout=30)
            self.judge(cat, "data.tokenizer: a model file " + name, r, "refuse")
        for name, sets in (("bytes on shards of a model", on("shards-a", "bytes") + ["--set", "model.vocab_size=256"]),
                           ("none on shards of a model", on("shards-a", "none")),
                           ("a model with model.vocab_size 256", on("shards-a", a) + ["--set", "model.vocab_size=256"]),
                           ("a model on byte-level shards", on("shards-a", a) + ["--set",
                                                                               "data.val=%s/val_*.bin" % self.data])):
            r = self.train(self.fresh("tok-run"), sets)
            self.judge(cat, "data.tokenizer " + name, r, "refuse")
        # The record beside the shards, damaged.
        for name, hurt in (("garbage", lambda p: open(p, "wb").write(os.urandom(500))),
                           ("cut short", lambda p: os.truncate(p, 40)),
                           ("a FIFO", lambda p: (os.remove(p), os.mkfifo(p))),
                           ("a directory", lambda p: (os.remove(p), os.makedirs(p))),
                           ("a dangling link", lambda p: (os.remove(p), os.symlink("/nonexistent", p)))):
            copy = self.fresh("tok-record")
            shutil.copytree(os.path.join(d, "shards-a"), os.path.join(copy, "s"))
            hurt(os.path.join(copy, "s", "tokenizer.txt"))
            r = self.train(os.path.join(copy, "run"), on("shards-a", a) + ["--set",
                                                                          "data.train=%s/s/train_*.bin" % copy])
            self.judge(cat, "tokenizer.txt beside the shards: " + name, r, "refuse")
        # Weights of a, continued with another model or where the model moved.
        resume = lambda run_dir, sets: self.train(run_dir, sets + ["--resume", "auto", "--set", "train.steps=6"])
        copy = self.copy_of(run_a, "tok-resume")
        self.judge(cat, "resume with another model on its shards", resume(copy, on("shards-b", b)), "refuse")
        copy = self.copy_of(run_a, "tok-moved")
        moved = os.path.join(self.fresh("tok-moved-model"), "renamed.model")
        shutil.copy(a, moved)
        self.judge(cat, "resume with the model file moved and renamed", resume(copy, on("shards-a", moved)), "accept",
                   check=lambda: self.valid_checkpoints(copy) and len(self.losses(copy)) == 6)
        export = os.path.join(d, "export")
        run([self.bin("moe-checkpoint"), "export", run_a, "--out", export])
        r = self.train(self.fresh("tok-init"), on("shards-b", b) + ["--init-from", os.path.join(export,
                                                                                               "model.safetensors")])
        self.judge(cat, "--init-from weights of another model", r, "refuse")
        # moe-generate reads the model the run named.
        generate = lambda run_dir: run([self.bin("moe-generate"), run_dir, "--prompt", "The ", "--tokens", "8"])
        self.judge(cat, "moe-generate", generate(run_a), "accept", program="moe-generate")
        for name, hurt in (("replaced by another model", lambda: shutil.copy(b, a)),
                           ("replaced by random bytes", lambda: shutil.copy(garbage, a)),
                           ("removed", lambda: os.remove(a))):
            hurt()
            self.judge(cat, "moe-generate with the run's model " + name, generate(run_a), "refuse",
                       program="moe-generate")
        for args in (["--tokenizer", garbage], ["--tokenizer", os.path.join(d, "none.model")],
                     ["--tokenizer", b, "--version", "9"], ["--tokenizer", "none"]):
            r = run([self.bin("moe-shards"), "--out", self.fresh("tok-shards")] + args + texts)
            self.judge(cat, "moe-shards " + " ".join(x.replace(self.work, "W") for x in args), r, "refuse",
                       program="moe-shards")

    def signals(self):
        """Runs killed (SIGKILL) or stopped (SIGTERM) at moments spread over a run, then resumed: the
        resumed losses equal the run that never stopped."""
        cat = "signals"
        for i, delay in enumerate((0.4, 1.0, 1.6) if self.quick else (0.3, 0.6, 0.9, 1.2, 1.5, 1.8)):
            for sig in (signal.SIGKILL, signal.SIGTERM):
                run_dir = self.fresh("sig")
                cmd = [self.bin("moe-train"), "--config", self.config, "--set", "run.out_dir=" + run_dir, "--set",
                       "checkpoint.every=1", "--set", "train.steps=6", "--set", "eval.every=0"]
                env = dict(os.environ, OMP_NUM_THREADS="1")
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                time.sleep(delay)
                proc.send_signal(sig)
                proc.wait()
                r = self.train(run_dir, ["--resume", "auto", "--set", "checkpoint.every=1", "--set", "eval.every=0"])
                # The reference ran with evaluation: compare the training losses only.
                self.judge(cat, "%s after %.1f s, then --resume auto" % (signal.Signals(sig).name, delay), r,
                           "accept", check=lambda d=run_dir: self.resumes_exactly(d) and len(self.losses(d)) == 6)

    # ---- report -----------------------------------------------------------------------------------

    def report(self, verbose):
        verdicts = ("clean", "crashed", "hung", "silently wrong", "unclear")
        print("%-11s %6s %6s %8s %5s %15s %8s" % (("category", "tried") + verdicts))
        total = {v: 0 for v in verdicts}
        tried = 0
        for cat, rows in self.results.items():
            counts = {v: sum(1 for _, got, _ in rows if got == v) for v in verdicts}
            print("%-11s %6d %6d %8d %5d %15d %8d" % ((cat, len(rows)) + tuple(counts[v] for v in verdicts)))
            for v in verdicts:
                total[v] += counts[v]
            tried += len(rows)
        print("%-11s %6d %6d %8d %5d %15d %8d" % (("all", tried) + tuple(total[v] for v in verdicts)))
        bad = [(cat, name, got, detail) for cat, rows in self.results.items() for name, got, detail in rows
               if got != "clean" or verbose]
        for cat, name, got, detail in bad:
            print("  %s: %s: %s (%s)" % (cat, got, name, detail))
        return all(got == "clean" for _, _, got, _ in bad)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("build")
    p.add_argument("--only", action="append", help="config, shards, checkpoint, mpi, disk, tools, tokenizer, signals")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--verbose", action="store_true", help="list every fault, not only those that were not clean")
    p.add_argument("--quick", action="store_true", help="fewer values per config key and fewer kill times (CI)")
    a = p.parse_args()
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    h = Harness(os.path.abspath(a.build), src, a.keep, a.quick)
    try:
        h.setup()
        order = [("config", h.configs), ("shards", h.shards), ("checkpoint", h.checkpoints), ("mpi", h.mpi),
                 ("disk", h.disk), ("tools", h.tools), ("tokenizer", h.tokenizer), ("signals", h.signals)]
        for name, fn in order:
            if a.only and name not in a.only:
                continue
            t0 = time.time()
            fn()
            print("inject: %s done in %.0f s" % (name, time.time() - t0), flush=True)
        ok = h.report(a.verbose)
    finally:
        if a.keep:
            print("kept " + h.work)
        else:
            shutil.rmtree(h.work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
