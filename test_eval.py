"""eval.py: several attacks in one call, the quick AutoAttack flag, the dual model's own out folder, bad input.

In process (tc.cli(ev.main) is what `python eval.py` runs), on a 1-epoch digits ST checkpoint.
"""
import json
import shutil
import sys

import pytest
import torch

import eval as ev
import train_common as tc
import train_st


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder with runs st (1 epoch of ST on digits) and rter (a copy of it: any MoE serves as the robust one)."""
    root = tmp_path_factory.mktemp("runs")
    train_st.main(["--dataset", "digits", "--device", "cpu", "--epochs", "1", "--bs", "512", "--eval-n", "20",
                   "--eval-steps", "1", "--out", str(root / "st")])
    (root / "rter").mkdir()
    shutil.copy(root / "st" / "ckpt.pt", root / "rter" / "ckpt.pt")
    return root


def files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_several_attacks_in_one_call_write_each_ones_files(runs, tmp_path):
    ckpt = str(runs / "st" / "ckpt.pt")
    small = ["--ckpt", ckpt, "--n", "30", "--aa-n", "8", "--steps", "2", "--aa-version", "quick"]
    results = ev.main([*small, "--attack", "pgd,aa,smooth", "--out", str(tmp_path / "all")])
    assert files(tmp_path / "all") == [f"eval_{a}.{ext}" for a in ("aa", "pgd", "smooth") for ext in ("json", "md")]
    for attack in ("pgd", "aa", "smooth"):
        blob = json.loads((tmp_path / "all" / f"eval_{attack}.json").read_text())
        assert blob == json.loads(json.dumps(results[attack])) and blob["attack"] == attack
        assert blob["n"] == (8 if attack == "aa" else 30)
        assert {"sa", "ra", "ra_e", "ra_r"} <= set(blob) and len(blob["index"]) == blob["n"]
        assert ("aa_version" in blob) == (attack == "aa")
    assert json.loads((tmp_path / "all" / "eval_aa.json").read_text())["aa_version"] == \
        "quick: APGD-CE only, 10 iterations"
    # each attack's numbers are those of a call with that attack alone (no dependence on the list)
    alone = ev.main([*small, "--attack", "smooth", "--out", str(tmp_path / "alone")])["smooth"]
    assert alone == results["smooth"]
    assert (tmp_path / "alone" / "eval_smooth.md").read_text() == (tmp_path / "all" / "eval_smooth.md").read_text()


@pytest.mark.parametrize("version", ["standard", "quick"])
def test_aa_version_reaches_the_attack_and_only_quick_is_labelled(runs, tmp_path, monkeypatch, version):
    seen = []

    def fake_attack(model, x, y, target, name, eps, step, steps, bs, bar, aa_version):
        seen.append((name, aa_version))
        bar.update(len(x))
        return torch.ones(len(x), dtype=torch.bool), torch.ones(len(x), dtype=torch.bool)

    monkeypatch.setattr(ev, "evaluate_attack", fake_attack)
    flags = ["--ckpt", str(runs / "st" / "ckpt.pt"), "--attack", "aa", "--n", "10", "--out", str(tmp_path)]
    ev.main(flags if version == "standard" else [*flags, "--aa-version", version])
    assert seen == [("aa", version)] * 3  # whole, experts, router
    blob = json.loads((tmp_path / "eval_aa.json").read_text())
    assert ("aa_version" in blob) == (version == "quick")  # report titles read a missing key as standard


def test_a_pair_gets_a_folder_of_its_own_beside_the_runs(runs, capsys):
    before = {run: files(runs / run) for run in ("st", "rter")}
    results = ev.main(["--std", str(runs / "st" / "ckpt.pt"), "--rob", str(runs / "rter" / "ckpt.pt"),
                       "--alphas", "0.5,1.0", "--n", "20", "--steps", "1", "--attack", "pgd"])
    out = runs / "dual_st+rter"
    assert files(out) == ["eval_pgd.json", "eval_pgd.md"]
    assert [row["alpha"] for row in results["pgd"]["rows"]] == [0.5, 1.0]
    assert {run: files(runs / run) for run in ("st", "rter")} == before  # nothing written into the runs
    assert f"wrote {out / 'eval_pgd'}.json" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ev.parse_args(["--help"])
    assert "dual_<std run>+<rob run>" in " ".join(capsys.readouterr().out.split())


def test_default_out_names_both_runs():
    args = ev.parse_args(["--std", "/r/digits/st-seed1/ckpt.pt", "--rob", "/r/digits/rter-seed1/ckpt.pt"])
    assert ev.default_out(args) == "/r/digits/dual_st-seed1+rter-seed1"
    args = ev.parse_args(["--std", "/m/a.pt", "--rob", "/m/b.pt"])  # checkpoints outside run folders
    assert ev.default_out(args) == "/m/dual_a+b"
    assert ev.default_out(ev.parse_args(["--ckpt", "/r/st/ckpt.pt"])) == "/r/st"


# every bad input: flags (with {st} a good checkpoint, {noeps} one whose args lack eps), words of the error line
BAD = {
    "bs_zero": (["--ckpt", "{st}", "--bs", "0"], ["--bs", "0"]),
    "n_negative": (["--ckpt", "{st}", "--n", "-5"], ["--n", "-5"]),
    "aa_n_negative": (["--ckpt", "{st}", "--aa-n", "-1"], ["--aa-n"]),
    "steps_negative": (["--ckpt", "{st}", "--steps", "-1"], ["--steps"]),
    "steps_not_int": (["--ckpt", "{st}", "--steps", "2.5"], ["--steps", "2.5"]),
    "eps_above_one": (["--ckpt", "{st}", "--eps", "1.5"], ["--eps", "1.5"]),
    "eps_negative": (["--ckpt", "{st}", "--eps", "-0.1"], ["--eps"]),
    "eps_nan": (["--ckpt", "{st}", "--eps", "nan"], ["--eps", "nan"]),
    "step_size_inf": (["--ckpt", "{st}", "--step-size", "inf"], ["--step-size", "inf"]),
    "step_size_negative": (["--ckpt", "{st}", "--step-size", "-0.01"], ["--step-size"]),
    "seed_not_int": (["--ckpt", "{st}", "--seed", "x"], ["--seed", "x"]),
    "alphas_low": (["--std", "{st}", "--rob", "{st}", "--alphas", "0.7,0.4"], ["alpha", "0.4"]),
    "alphas_not_number": (["--std", "{st}", "--rob", "{st}", "--alphas", "0.5,x"], ["alpha", "'x'"]),
    "alphas_empty_item": (["--std", "{st}", "--rob", "{st}", "--alphas", "0.5,"], ["alpha"]),
    "alphas_on_single_moe": (["--ckpt", "{st}", "--alphas", "0.7"], ["--alphas", "dual"]),
    "unknown_attack": (["--ckpt", "{st}", "--attack", "pgd,bogus"], ["--attack", "bogus"]),
    "unknown_aa_version": (["--ckpt", "{st}", "--aa-version", "fast"], ["--aa-version", "fast"]),
    "unknown_target": (["--ckpt", "{st}", "--targets", "whole,bogus"], ["--targets", "bogus"]),
    "dual_target_on_single_moe": (["--ckpt", "{st}", "--targets", "rmoe"], ["rmoe", "single MoE"]),
    "single_target_on_dual_model": (["--std", "{st}", "--rob", "{st}", "--targets", "experts"],
                                    ["experts", "dual model"]),
    "smooth_on_dual_model": (["--std", "{st}", "--rob", "{st}", "--attack", "pgd,smooth"], ["smooth", "dual"]),
    "checkpoint_without_eps": (["--ckpt", "{noeps}"], ["noeps.pt", "pass --eps"]),
    "no_checkpoint": ([], ["--ckpt", "--std", "--rob"]),
    "ckpt_and_pair": (["--ckpt", "{st}", "--std", "{st}", "--rob", "{st}"], ["either --ckpt"]),
    "std_without_rob": (["--std", "{st}"], ["--rob"]),
    "missing_checkpoint": (["--ckpt", "{tmp}/nothing.pt"], ["nothing.pt"]),
    "unknown_device": (["--ckpt", "{st}", "--device", "tpu"], ["tpu"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_error_line_and_exit_2(runs, tmp_path, monkeypatch, capsys, name):
    ckpt = torch.load(runs / "st" / "ckpt.pt", map_location="cpu", weights_only=True)
    del ckpt["args"]["eps"]
    torch.save(ckpt, tmp_path / "noeps.pt")
    flags, words = BAD[name]
    argv = [a.format(st=runs / "st" / "ckpt.pt", noeps=tmp_path / "noeps.pt", tmp=tmp_path) for a in flags]
    monkeypatch.delenv("MOE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["eval.py", *argv, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        tc.cli(ev.main)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "out").exists(), "refused before writing anything"
