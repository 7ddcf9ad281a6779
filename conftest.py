"""Shared by the test files: tiny models and batches, hand-written references, trained runs, CLI subprocesses.

CPU only, tiny models, the bundled digits data. On a shared machine run one file at a time:
    python -m pytest -q test_moe.py
Command-line runs are subprocesses that a test file starts before its first test (start_when_selected), so
they overlap its in-process tests; a test collects the result when it needs it, and the file's end stops any
left, so that they never slow the next file.
"""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import moe

REPO = Path(__file__).resolve().parent
# every tiny training run: a 2-step training attack and a short per-epoch evaluation
TINY = ["--dataset", "digits", "--device", "cpu", "--eval-n", "40", "--eval-steps", "2", "--steps", "2"]
# one epoch of two 512-row batches: what a run that only has to start, write and stop needs
QUICK = [*TINY, "--epochs", "1", "--bs", "512"]
MEAN, STD = (0.3,), (0.4,)  # the tiny models' normalisation, far from the identity so a missing one shows
# the models here are tiny: one intra-op thread is as fast, and far faster when the 2 cores are shared
torch.set_num_threads(1)


def tiny_argv(out, epochs=2, *extra, bs=128):
    """Flags of a tiny digits run of `epochs` epochs into out; extra flags come last, so they win."""
    return [*TINY, "--bs", str(bs), "--epochs", str(epochs), "--out", str(out), *extra]


# ----------------------------------------------------------------------------- tiny models and batches

def tiny_moe(topk=1, experts=3, seed=0, sharp_heads=False):
    """An untrained cnn MoE on 1x8x8 inputs with a sharp router (rows route and rank experts differently);
    sharp_heads: expert outputs that move under attack, so KL terms are far above rounding."""
    torch.manual_seed(seed)
    model = moe.build_moe("cnn", experts, topk, 10, (1, 8, 8), MEAN, STD)
    with torch.no_grad():
        model.router.weight.mul_(10.0)
        if sharp_heads:
            for expert in model.experts:
                expert.head.weight.mul_(10.0)
    return model


def batch(n=32, seed=1, box_edges=True):
    """Random 1x8x8 images and labels; box_edges puts rows of 0 and 1 pixels where projection must clamp."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    if box_edges:
        x[:, :, 0, :] = 0.0
        x[:, :, -1, :] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


def all_training(model):
    return all(m.training for m in model.modules())


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    """Per parameter of module, whether it differs from its snapshot."""
    return [not torch.equal(b, p.detach()) for b, p in zip(before, module.parameters())]


# ----------------------------------------------------------------------------- hand-written references

def normalized(x):
    """(x - MEAN) / STD from the constants, not from the model's buffers."""
    return (x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)


def hand_gates(model, x):
    """a(x) = softmax(W (x - mean) / std + b), written out."""
    return torch.softmax(normalized(x).flatten(1) @ model.router.weight.T + model.router.bias, dim=1)


def hand_expert(model, i, x):
    """Expert i's logits on the whole batch x."""
    return model.experts[i](normalized(x))


def by_hand(model, x):
    """Gates (B, E) and every expert's logits (B, E, C), the logits computed row by row."""
    xn = normalized(x)
    logits = torch.stack([torch.cat([f(xn[b:b + 1]) for f in model.experts]) for b in range(len(x))])
    return hand_gates(model, x), logits


def topk_reference(gates_route, logits_in, k):
    """Row by row: sum over the k largest gates of gate * expert logits (gates not renormalised)."""
    rows = []
    for b in range(len(gates_route)):
        top = torch.topk(gates_route[b], k).indices
        rows.append(sum(gates_route[b, i] * logits_in[b, i] for i in top.tolist()))
    return torch.stack(rows)


def hand_moe(model, x):
    """(F(x), gates, top-k indices), F(x) = sum over the k largest gates of a_i(x) f_i(x), written out."""
    gates, logits = by_hand(model, x)
    idx = gates.argsort(1, descending=True)[:, :model.topk]
    return topk_reference(gates, logits, model.topk), gates, idx


# ----------------------------------------------------------------------------- trained runs (in process)

@pytest.fixture(scope="session")
def st_run(tmp_path_factory):
    """A 2-epoch digits ST run (4 experts, default cyclic schedule); reference for resume, input for eval.py."""
    import train_st
    out = tmp_path_factory.mktemp("st")
    train_st.main(tiny_argv(out, 2))
    return out


@pytest.fixture(scope="session")
def st_ckpt(tmp_path_factory):
    """An ST MoE trained well above chance (3 experts, 4 epochs): the AutoAttack model and JTDMoE's F_S."""
    import train_st
    out = tmp_path_factory.mktemp("st_ckpt")
    train_st.main(tiny_argv(out, 4, "--experts", "3", "--eval-every", "4", bs=64))
    return out / "ckpt.pt"


@pytest.fixture(scope="session")
def ckpts(st_ckpt, tmp_path_factory):
    """Checkpoints: st (st_ckpt), a 1-epoch RT-ER MoE (rter) and a 1-epoch JTDMoE made of the two (jtd)."""
    import train_jtdmoe
    import train_rter
    root = tmp_path_factory.mktemp("ckpts")
    train_rter.main([*QUICK, "--out", str(root / "rter")])
    train_jtdmoe.main(["--std", str(st_ckpt), "--rob", str(root / "rter" / "ckpt.pt"), *QUICK, "--alpha", "0.7",
                       "--out", str(root / "jtd")])
    return {"st": st_ckpt, "rter": root / "rter" / "ckpt.pt", "jtd": root / "jtd" / "ckpt.pt"}


# ----------------------------------------------------------------------------- command-line subprocesses

class Launched:
    """A subprocess started now and collected when a test needs its result."""

    def __init__(self, argv, cwd, env, timeout=300):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.timeout, self._done = timeout, None

    def result(self):
        if self._done is None:
            try:
                out, err = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
            self._done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)
        return self._done

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def cli_env(tmp):
    """The environment of a CLI run: no tracebacks (MOE_DEBUG off), the hub offline, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "MOE_DEBUG"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(tmp) / "hf"), OMP_NUM_THREADS="1")
    return env


def launch_all(plan, tmp, out_flag=True):
    """Start `python REPO/<script> flags` for every name -> (script, flags) of plan, in tmp; train scripts
    write into tmp/<name> (out_flag)."""
    runs = {}
    for name, (script, flags) in plan.items():
        argv = [sys.executable, str(REPO / script), *flags]
        if out_flag and script.startswith("train_"):
            argv += ["--out", str(tmp / name)]
        runs[name] = Launched(argv, tmp, cli_env(tmp), timeout=400)
    return runs


def the_error_line(proc) -> str:
    """The one 'error:' line a failing CLI must print on stderr, with no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    return lines[0]


def assert_refused(proc, words, code=2):
    """Bad input: exit `code`, one error line holding every word."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    line = the_error_line(proc)
    for w in words:
        assert w in line, (w, line)


def succeeded(runs, name):
    proc = runs[name].result()
    assert proc.returncode == 0, (name, proc.stderr[-3000:])
    return proc


STANDALONE = ("import sys, moe, attacks\n"
              "bad = [m for m in ('torchvision', 'timm', 'sklearn', 'pyautoattack', 'autoattack', 'data',"
              " 'train_common') if m in sys.modules]\n"
              "assert not bad, bad\n")
# name -> (script, flags, words the one error line must hold); the flags come after QUICK so that a check
# that wrongly lets a run through ends in seconds instead of training for minutes
BAD_TRAIN = {
    "missing_cifar": ("train_st.py", ["--dataset", "cifar10", "--data-dir", "/nonexistent"],
                      ["/nonexistent", "--download"]),
    "unknown_arch": ("train_st.py", ["--arch", "mlp"], ["argument --arch:", "mlp"]),
    "unknown_dataset": ("train_st.py", ["--dataset", "mnist"], ["argument --dataset:", "mnist"]),
    "topk_gt_experts": ("train_st.py", ["--topk", "5", "--experts", "4"], ["topk", "5"]),
    "one_expert": ("train_st.py", ["--experts", "1"], ["an MoE needs at least 2 experts, got 1"]),  # MoE-CNN: 1 ok
    "negative_eps": ("train_st.py", ["--eps", "-1"], ["argument --eps:", "-1"]),
    "vit_pretrained_offline": ("train_st.py", ["--arch", "vit_small", "--pretrained"], ["--pretrained"]),
    "bad_beta": ("train_rter.py", ["--beta", "-1"], ["argument --beta:", "-1"]),
    "bad_kl_attack": ("train_rter.py", ["--kl-attack", "bogus"], ["argument --kl-attack:", "bogus"]),
    "bad_balance": ("train_at.py", ["--balance", "-0.1"], ["argument --balance:", "-0.1"]),
}
BAD_JTDMOE = {  # need --std / --rob checkpoints, so they start once those exist
    "bad_alpha_low": ("train_jtdmoe.py", ["--alpha", "0.3"], ["argument --alpha:", "0.3"]),
    "bad_alpha_high": ("train_jtdmoe.py", ["--alpha", "1.2"], ["argument --alpha:", "1.2"]),
}
# {tmp}: a folder holding good.pt (the ST checkpoint) and damaged copies of it
BAD_EVAL = {
    "eval_truncated": (["--ckpt", "{tmp}/truncated.pt"], ["truncated.pt"]),
    "eval_random_bytes": (["--ckpt", "{tmp}/random.pt"], ["random.pt"]),
    "eval_wrong_shapes": (["--ckpt", "{tmp}/wrong_shapes.pt"], ["wrong_shapes.pt", "architecture"]),
    "eval_missing_ckpt": (["--ckpt", "{tmp}/nothing_here.pt"], ["nothing_here.pt"]),
    "eval_negative_eps": (["--ckpt", "{tmp}/good.pt", "--eps", "-0.1"], ["eps"]),
    "eval_no_ckpt": ([], ["--ckpt"]),
}
# beta 1e39 overflows float32, so the RT-ER loss is inf (or nan) at the first batch
DIVERGING = ["--beta", "1e39"]


@pytest.fixture(scope="module")
def standalone_import(tmp_path_factory):
    """Importing moe and attacks in a fresh interpreter."""
    run = Launched([sys.executable, "-c", STANDALONE], REPO, cli_env(tmp_path_factory.mktemp("standalone")))
    yield run
    run.stop()


@pytest.fixture(scope="module")
def train_cli_fresh(tmp_path_factory):
    """Train-script runs that need no checkpoint: one of each method, bad flags, a divergence."""
    tmp = tmp_path_factory.mktemp("train_cli")
    plan = {name: (script, [*QUICK, *flags]) for name, (script, flags, _) in BAD_TRAIN.items()}
    plan.update({"at": ("train_at.py", ["--method", "at", *QUICK]),
                 "trades": ("train_at.py", ["--method", "trades", *QUICK]),
                 "advmoe": ("train_advmoe.py", QUICK),
                 "rter": ("train_rter.py", QUICK),
                 "diverge_fresh": ("train_rter.py", [*DIVERGING, *QUICK])})
    runs = types.SimpleNamespace(tmp=tmp, procs=launch_all(plan, tmp))
    yield runs
    for r in runs.procs.values():
        r.stop()


@pytest.fixture(scope="module")
def train_cli(train_cli_fresh, ckpts):
    """train_cli_fresh's runs plus those that start from checkpoints: JTDMoE, its bad alphas, a divergence
    after a finished epoch. good_ckpt: the bytes of the checkpoint that divergence must leave alone."""
    tmp = train_cli_fresh.tmp
    pair = ["--std", str(ckpts["st"]), "--rob", str(ckpts["rter"])]
    plan = {name: (script, [*pair, *QUICK, *flags]) for name, (script, flags, _) in BAD_JTDMOE.items()}
    plan["jtdmoe"] = ("train_jtdmoe.py", [*pair, "--alpha", "0.7", *QUICK])
    # a finished 1-epoch RT-ER run made with the diverging beta (resume refuses a changed beta), so that
    # --epochs 2 --resume diverges at the first step of epoch 2
    ckpt = torch.load(ckpts["rter"], map_location="cpu", weights_only=True)
    ckpt["args"]["beta"] = float(DIVERGING[1])
    (tmp / "diverge_resume").mkdir()
    torch.save(ckpt, tmp / "diverge_resume" / "ckpt.pt")
    plan["diverge_resume"] = ("train_rter.py", [*DIVERGING, "--resume", *QUICK, "--epochs", "2"])
    procs = launch_all(plan, tmp)
    runs = types.SimpleNamespace(tmp=tmp, procs={**train_cli_fresh.procs, **procs},
                                 good_ckpt=(tmp / "diverge_resume" / "ckpt.pt").read_bytes())
    yield runs
    for r in procs.values():
        r.stop()


@pytest.fixture(scope="module")
def eval_cli(ckpts, tmp_path_factory):
    """eval.py on the ST checkpoint, on damaged copies of it, on the JTDMoE and on the ST / RT-ER pair."""
    import numpy as np
    tmp = tmp_path_factory.mktemp("eval_cli")
    good = ckpts["st"].read_bytes()
    (tmp / "good.pt").write_bytes(good)
    (tmp / "truncated.pt").write_bytes(good[:len(good) // 2])
    (tmp / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    ckpt = torch.load(ckpts["st"], map_location="cpu", weights_only=True)
    ckpt["args"]["experts"] += 1  # weights of 3 experts, args saying 4
    torch.save(ckpt, tmp / "wrong_shapes.pt")
    st, rter, jtd = str(ckpts["st"]), str(ckpts["rter"]), str(ckpts["jtd"])
    short = ["--n", "40", "--steps", "2"]
    plan = {name: ("eval.py", [a.format(tmp=tmp) for a in flags]) for name, (flags, _) in BAD_EVAL.items()}
    plan.update({  # every run names its --out: the default folder is not what these tests are about
        "eval_ok": ("eval.py", ["--ckpt", str(tmp / "good.pt"), "--n", "60", "--steps", "5"]),
        "eval_jtd": ("eval.py", ["--ckpt", jtd, *short]),
        "eval_pair": ("eval.py", ["--std", st, "--rob", rter, "--alphas", "0.5,1.0", *short]),
        "eval_rob": ("eval.py", ["--ckpt", rter, *short]),
        "bad_eval_alpha": ("eval.py", ["--std", st, "--rob", rter, "--alphas", "0.4", "--n", "10", "--steps", "1"]),
    })
    for name, (_, flags) in plan.items():
        flags += ["--out", str(tmp / name)]
    runs = types.SimpleNamespace(tmp=tmp, procs=launch_all(plan, tmp))
    yield runs
    for r in runs.procs.values():
        r.stop()


def start_when_selected(request, name):
    """Set up fixture `name` now if a selected test of the requesting module uses it: its subprocesses start."""
    if any(name in item.fixturenames for item in request.session.items if item.module is request.module):
        request.getfixturevalue(name)


def vit_stand_in(hf_home) -> Path:
    """A local stand-in for ViT-S/16's ImageNet weights (random, 1000 classes) in the hub cache under hf_home:
    what `--pretrained` reads offline (HF_HOME=hf_home), so the pretrained path runs without the hub."""
    import json
    import safetensors.torch
    import timm
    repo = timm.create_model("vit_small_patch16_224").pretrained_cfg["hf_hub_id"]  # timm/<model>.<tag>
    root = Path(hf_home) / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = timm.create_model("vit_small_patch16_224", pretrained=False).state_dict()
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "num_classes": 1000}))
    return snapshot / "model.safetensors"
