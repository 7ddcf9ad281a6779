"""The paper presets end to end without a GPU: on tiny files in the real formats, one run of every distinct training
command shape the Makefile lists for cifar10, cifar100 and tinyimagenet (with what it starts from), then report.py."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import REPO, cli_env, vit_stand_in
from test_data import save_jpeg, write_cifar, write_cifar100

# one step an epoch (fewer images than a batch), 1-step attacks, 2 test points: the commands and the report must
# work, nothing has to be learned (Table A1's 10 training steps become 1: CURVE's --steps comes last)
SMALL = ["EPOCHS=1", "JT_EPOCHS=1", "CNN_EPOCHS=1", "A2_EPOCHS=1", "EVAL_N=2", "AA_N=2", "SCALES=0.5",
         "CURVE=--eval-n 2 --eval-steps 1 --steps 1"]
PATHS = ("--out", "--init", "--std", "--rob", "--data-dir", "--ckpt")
RUN_FLAGS = ("--resume", "--seed", "--dataset", "--amp", "--channels-last")  # the GPU flags differ per preset
PRESETS = ("cifar10", "cifar100", "tinyimagenet")  # a shape runs in the first preset that lists it


def write_tinyimagenet(root, classes=2, per_class=2):
    """TinyImageNet's layout (wnids.txt, train/<wnid>/images, val/images + val_annotations.txt), 64 x 64 JPEGs."""
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, w in enumerate(wnids):
        for i in range(per_class):
            save_jpeg(folder / "train" / w / "images" / f"{w}_{i}.JPEG", (40 + 80 * c, 90, 200 - 80 * c))
        save_jpeg(folder / "val" / "images" / f"val_{c}.JPEG", (40 + 80 * c, 90, 200 - 80 * c))
    (folder / "val" / "val_annotations.txt").write_text("".join(f"val_{c}.JPEG\t{w}\t0\t0\t63\t63\n"
                                                                for c, w in enumerate(wnids)))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar(root, per_batch=1, n_test=2)  # 5 training images
    write_cifar100(root, n_train=4, n_test=2)
    write_tinyimagenet(root)
    return root


def planned(preset, runs, data):
    """(target, command) of every job `make -n` lists for the quick preset, in make's order."""
    out = subprocess.run(["make", "-s", "-n", "-f", "Makefile", f"PRESET={preset}", "QUICK=1", f"RUNS={runs}",
                          f"DATA={data}", *SMALL], cwd=REPO, capture_output=True, text=True, check=True).stdout
    jobs = []
    for line in out.splitlines():
        words = shlex.split(line)
        if "job" in words:
            at = words.index("job")
            jobs.append((words[at + 1], words[at + 2:]))
    return jobs


def shape(command, arch=True):
    """A command with its numbers, paths and dataset (and arch=False: its arch) left out: the script, its flags and the
    words they take (AT (Dense) and S-Dense, --experts 1, stay apart from the MoE runs)."""
    key, words = [command[1]], command[2:]
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        flag, _, value = word.partition("=")
        if not value and i + 1 < len(words) and not words[i + 1].startswith("--"):
            value = words[i + 1]
        if flag in RUN_FLAGS or (not arch and flag == "--pretrained"):
            continue
        if flag == "--arch" and not arch:  # whole-network experts (resnet18, vit_small) or the MoE-CNN family
            key += ["--arch moe_*"] if value.startswith("moe_") else []
        elif flag in PATHS:
            key.append(flag)
        elif re.fullmatch(r"[-+.\de]+(,[-+.\de]+)*", value or "x"):
            key += [f"{flag} 1"] if (flag, value) == ("--experts", "1") else []
        else:
            key.append(f"{flag} {value}".strip())
    return " ".join(sorted(key))


def trains(jobs):
    """(run folder, command) of every training job, and of every evaluation-only run (the dual sweep)."""
    trained = {os.path.dirname(t) for t, _ in jobs if t.endswith("train.done")}
    return [(os.path.dirname(t), c) for t, c in jobs if t.endswith("train.done") or os.path.dirname(t) not in trained]


def choose(jobs, covered):
    """{run: command}: one run of every shape whose method an earlier preset did not run (covered: shapes, arch aside),
    the preset's first run and its first AT (Sparse); make also trains what they start from."""
    chosen, seen = {}, set()
    for run, command in trains(jobs):
        if "moe_wrn28_10" in command and "--init" not in command:  # WRN-28-10 repeats ResNet-18's code paths at
            continue  # 10x the cost: only its AT (Sparse) from AT (Dense), the load that once failed, runs
        new = shape(command) not in seen and shape(command, arch=False) not in covered
        if new or not chosen or ("--init" in command and not any("--init" in c for c in chosen.values())):
            seen.add(shape(command))
            chosen[run] = command
    return chosen


def family(command):
    """What eval.py sees of a run: a dual model, an AT (Sparse) network, a dense or a routed MoE-CNN, or an MoE."""
    arch = command[command.index("--arch") + 1] if "--arch" in command else ""
    return ("dual" if any(w.startswith("--std") for w in command) else "sparse" if "--init" in command else
            "dense" if "--experts" in command and command[command.index("--experts") + 1] == "1" else
            "moe-cnn" if arch.startswith("moe_") else "moe")


def evaluated(jobs, chosen, covered):
    """The chosen runs to evaluate: the first of every evaluation command shape and model family, and the runs forced
    in (their shape ran in an earlier preset), but not ViT-S at 224 x 224: minutes per attack on a CPU."""
    out, seen = [], set()
    for target, command in jobs:
        run = os.path.dirname(target)
        if run not in chosen or target.endswith("train.done"):
            continue
        key, forced = (shape(command), family(chosen[run])), shape(chosen[run], arch=False) in covered
        if (key not in seen and not forced) or (forced and "vit_small" not in chosen[run]):
            out.append(run)
        seen.add(key)
    return out


def targets(jobs, chosen, evaluate):
    """make targets: the chosen runs' training, the evaluations of those in evaluate."""
    out = []
    for target, command in jobs:
        run = os.path.dirname(target)
        if run in chosen and target.endswith("train.done"):
            out.append(target)
        elif run in evaluate:
            out += [f"{run}/eval_{a}.json" for a in command[command.index("--attack") + 1].split(",")]
    return out


def run_preset(preset, tmp, data, env):
    """make the chosen runs of the quick preset in tmp/preset: (runs folder, jobs, chosen, evaluated, make's result)."""
    earlier = PRESETS[:PRESETS.index(preset)]
    covered = {shape(c, arch=False) for p in earlier for _, c in trains(planned(p, tmp / p, data))}
    runs = tmp / preset
    jobs = planned(preset, runs, data)
    chosen = choose(jobs, covered)
    evaluate = evaluated(jobs, chosen, covered)
    proc = subprocess.run(["make", "-s", "-j2", "-f", "Makefile", f"PRESET={preset}", "QUICK=1", f"RUNS={runs}",
                           f"DATA={data}", *SMALL, *targets(jobs, chosen, evaluate)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return runs, jobs, chosen, evaluate, proc


def show(proc):
    return f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def perturbations(ckpt, data_dir, out, monkeypatch):
    """Every perturbation x_adv - x of eval.py's PGD on a run, evaluated in this process on 2 test points."""
    import attacks
    import eval as evaluate
    made, pgd = [], attacks.pgd

    def recorded(objective, x, *args, **kwargs):
        x_adv = pgd(objective, x, *args, **kwargs)
        made.append(x_adv - x)
        return x_adv
    monkeypatch.setattr(attacks, "pgd", recorded)
    evaluate.main(["--ckpt", str(ckpt), "--attack", "pgd", "--targets", "whole", "--steps", "1", "--n", "2",
                   "--step-size", str(2 / 255), "--data-dir", str(data_dir), "--out", str(out)])
    return made


@pytest.mark.parametrize("preset", PRESETS)
def test_every_training_command_shape_of_a_paper_preset_runs_and_reports(preset, tiny_data, tmp_path, monkeypatch):
    env = {**cli_env(tmp_path), "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    if preset == "tinyimagenet":  # the ViT experts' weights: absent (one line, before any training), then a stand-in
        runs, jobs, chosen, evaluate, proc = run_preset(preset, tmp_path / "absent", tiny_data, env)
        assert proc.returncode != 0 and "pretrained vit_small weights are unavailable" in proc.stderr, show(proc)
        assert not list(runs.glob("*/ckpt.pt")), "a run trained without its pretrained weights"
        vit_stand_in(env["HF_HOME"])
    runs, jobs, chosen, evaluate, proc = run_preset(preset, tmp_path, tiny_data, env)
    assert proc.returncode == 0, show(proc)
    commands = [" ".join(c) for _, c in jobs]
    if preset != "tinyimagenet":  # AT (Sparse) starts from its table's AT (Dense): ResNet-18, WRN-28-10 on cifar10
        sparse = {run: c[c.index("--arch") + 1] for run, c in trains(jobs) if run in chosen and "--init" in c}
        assert all(os.path.isfile(f"{run}/ckpt.pt") for run in sparse), sparse
        assert set(sparse.values()) == ({"moe_resnet18", "moe_wrn28_10"} if preset == "cifar10" else {"moe_resnet18"})
    for run in evaluate:
        assert any(f.startswith("eval_") and f.endswith(".json") for f in os.listdir(run)), run
    if preset == "cifar10":  # the dual sweep is in the plan, and ran
        assert any("--std" in c and "--alphas" in c for c in commands)
        assert any(os.path.basename(r).startswith("dual") for r in chosen)
    results = tmp_path / "results"
    report = subprocess.run([sys.executable, "report.py", preset, "--runs", str(runs), "--out", str(results),
                             "--quick", "--command", f"bash run_all.sh {preset} --quick"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, show(report)
    tables = "\n".join(p.read_text() for p in results.glob("*.md"))
    assert re.search(r"\| \w[^|]* paper \|", tables), tables[:2000]  # the paper's numbers beside ours
    assert json.loads((results / "results.json").read_text())["preset"] == preset
    assert "nan" not in (results / "claims.md").read_text()
    if preset == "tinyimagenet":  # the stand-in's weights were what --pretrained loaded
        assert json.loads((runs / "st" / "args.json").read_text())["pretrained"] is True
        # as the public code: the router reads, and PGD perturbs, the images resized to 224 x 224
        state = torch.load(runs / "st" / "ckpt.pt", weights_only=True)["model"]
        assert state["router.weight"].shape == (4, 3 * 224 * 224)
        made = perturbations(runs / "st" / "ckpt.pt", tiny_data, tmp_path / "eval224", monkeypatch)
        assert made and all(d.shape[1:] == (3, 224, 224) and 0 < d.abs().max() <= 2 / 255 + 1e-6 for d in made)
    else:  # AT (Sparse): our RA, and ours under the AdvMoE code's PGD-10, beside the paper's in Table A1 (cifar10);
        # Table A2 has no paper cells on cifar100
        table = (results / f"table{'A1' if preset == 'cifar10' else 'A2'}.md").read_text()
        paper = r"\d+\.\d\d ±" if preset == "cifar10" else "n/a"
        assert re.search(rf"AT \(Sparse\) \| \d+\.\d\d \| \d+\.\d\d \| {paper}", table), table
    if preset == "cifar10":  # ST under AutoAttack: ours, ours under the paper's '50-step AutoAttack', the paper's RA
        table = (results / "table1.md").read_text()
        assert re.search(r"\| AutoAttack \| \d+\.\d\d \| 92\.14 \| \d+\.\d\d \| \d+\.\d\d \| 14\.25 \|", table), table
        assert json.loads((runs / "st" / "eval_apgd-ce50.json").read_text())["steps"] == 50
