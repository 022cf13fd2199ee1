"""The task contract, proven on a toy task that registers from outside mtp (tests/core/toy_plugin) through the
``mtp.plugins`` entry point: discovery, failure isolation, resume, atomic writes, provenance, evaluate, train,
kill and resume, export, and the CLI — all without editing anything under mtp/."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

PLUGIN_DIR = Path(__file__).resolve().parent / "toy_plugin"
TASK = "toy_regression"


def make_site(tmp: Path) -> Path:
    """A folder that makes `mtp_toy` an installed distribution with an mtp.plugins entry point."""
    site = tmp / "site"
    info = site / "mtp_toy-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mtp-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mtp.plugins]\ntoy = mtp_toy\n")
    return site


def plugin_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(make_site(tmp)), str(PLUGIN_DIR), env.get("PYTHONPATH", "")])
    env.pop("MTP_TOY_KILL_AFTER_STEPS", None)
    return env


def mtp(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtp.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def write_pairs(root: Path) -> Path:
    """root/{train,val,test}/*.npy of (x, 3x + 1) rows."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        folder = root / split
        folder.mkdir(parents=True)
        for part in range(2):
            x = rng.uniform(-1, 1, n // 2)
            np.save(folder / f"part{part}.npy", np.stack([x, 3 * x + 1], axis=1))
    return root


RECIPE = """task: toy_regression
description: toy plugin recipe
backbone: {{name: toy_linear}}
data: {{name: toy_pairs, root: {root}}}
train: {{epochs: 6, batch_size: 4, lr: 0.2, optimizer: sgd, seed: 7, threads: 1, patience: 50,
        scheduler: StepLR, scheduler_kwargs: {{step_size: 3, gamma: 0.5}}}}
eval: {{batch_size: 3}}
output: {{dir: {out}}}
"""


@pytest.fixture
def toy():
    """The toy task registered in this process (and removed again, so other tests see only mtp's tasks)."""
    from mtp import registry

    for reg in (registry.TASKS, registry.BACKBONES, registry.DATASETS, registry.METRICS):
        reg.names()  # declare the built-in entries first
    sys.path.insert(0, str(PLUGIN_DIR))
    sys.modules.pop("mtp_toy", None)
    import mtp_toy

    yield mtp_toy
    for reg, name in ((registry.TASKS, TASK), (registry.BACKBONES, "toy_linear"), (registry.DATASETS, "toy_pairs"),
                      (registry.METRICS, "toy_mse")):
        reg.unregister(name)
    sys.path.remove(str(PLUGIN_DIR))
    sys.modules.pop("mtp_toy", None)


def trained(toy):
    from mtp import Pipeline

    pipe = Pipeline(TASK, pretrained=False)
    pipe.model.fc.weight.data.fill_(3.0)   # the exact solution, y = 3x + 1
    pipe.model.fc.bias.data.fill_(1.0)
    pipe.untrained = False
    return pipe


def test_folder_run_discovers_isolates_resumes_and_writes_atomically(toy, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    np.save(src / "a.npy", np.array([0.0, 1.0], np.float32))
    (src / "b.values.txt").write_text("2 3\n")                     # a two-part suffix
    (src / "c.npy").write_bytes(b"not an array")                    # broken: reported, the run goes on
    (src / ".hidden.npy").write_bytes(b"x")                         # hidden: skipped
    (src / "notes.md").write_text("x")                              # not the task's: ignored
    case = src / "sub" / "case1"                                    # a folder that is one item
    case.mkdir()
    (case / "CASE").write_text("")
    np.save(case / "p1.npy", np.array([1.0], np.float32))
    np.save(case / "p2.npy", np.array([2.0], np.float32))
    (src / "loop").symlink_to(src, target_is_directory=True)        # a self-referencing link: not followed

    pipe = trained(toy)
    out = src / "out"                                               # inside the input: never scanned as input
    report = pipe(src, output=out)
    assert report.items_written == 3 and len(report.failures) == 1
    assert report.failures[0].input.endswith("c.npy") and "not an array" in report.failures[0].error
    assert any("notes.md" in i for i in report.ignored) and any("loop" in i for i in report.ignored)
    np.testing.assert_allclose(np.load(out / "a_pred.npy"), [1.0, 4.0], atol=1e-6)
    np.testing.assert_allclose(np.load(out / "b_pred.npy"), [7.0, 10.0], atol=1e-6)   # full stem: b, not b.values
    np.testing.assert_allclose(np.load(out / "sub" / "case1_pred.npy"), [4.0, 7.0], atol=1e-6)
    failures = json.loads((out / "failures.json").read_text())
    assert [f["input"] for f in failures["failed"]] == [str(src / "c.npy")]
    assert oct((out / "a_pred.npy").stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    # Rerun: nothing redone; an item with one output missing is redone; a killed write's temporary is removed.
    (out / "b_pred.txt").unlink()
    stale = out / ".a_pred.npy.k2j4h5g6.part.npy"
    stale.write_bytes(b"partial")
    os.utime(stale, (1e9, 1e9))                                     # left by an earlier, killed run
    (src / "c.npy").unlink()
    again = pipe(src, output=out)
    assert again.items_written == 1 and sorted(Path(p).name for p in again.skipped_existing) == ["a.npy", "case1"]
    assert not stale.exists() and not (out / "failures.json").exists()
    assert not (out / "out").exists()


def test_output_folder_is_never_the_input_and_records_what_produced_it(toy, tmp_path):
    from mtp.pipeline import InputError

    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.array([1.0], np.float32))
    pipe = trained(toy)
    with pytest.raises(InputError, match="is the input folder"):
        pipe(src, output=src, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == ["a.npy"]

    out = tmp_path / "out"
    pipe(src, output=out)
    with pytest.raises(InputError, match="another run .*options"):
        pipe(src, output=out, offset=5.0)                            # other options: refused, not "already done"
    report = pipe(src, output=out, offset=5.0, overwrite=True)
    assert report.items_written == 1
    np.testing.assert_allclose(np.load(out / "a_pred.npy"), [9.0], atol=1e-6)
    assert pipe.config["offset"] == 0.0                             # the per-call option did not stick


def test_untrained_model_warns_and_evaluation_says_so(toy, tmp_path):
    from mtp import Pipeline
    from mtp.pipeline import OptionError, UntrainedModelWarning

    with pytest.warns(UntrainedModelWarning, match="no trained weights"):
        pipe = Pipeline(TASK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline(TASK, pretrained=False)                            # said explicitly: no warning
    metrics = pipe.evaluate(write_pairs(tmp_path / "data"))
    assert metrics["untrained"] is True and metrics["samples"] == 8
    assert trained(toy).evaluate(tmp_path / "data")["mse"] < 1e-10
    with pytest.raises(OptionError, match="offset"):
        Pipeline(TASK, pretrained=False, offset="much")


def test_plugin_task_through_the_cli_train_kill_resume_export_predict_eval(tmp_path):
    env = plugin_env(tmp_path)
    data = write_pairs(tmp_path / "data")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(root=data, out=tmp_path / "runs"))

    listing = mtp(["list", "tasks"], tmp_path, env)
    assert listing.returncode == 0 and TASK in listing.stdout, listing.stderr
    assert "toy_linear" in mtp(["list", "backbones"], tmp_path, env).stdout

    straight = mtp(["run", recipe, "output.name=straight", "--quiet"], tmp_path, env)
    assert straight.returncode == 0, straight.stderr
    expected = json.loads((tmp_path / "runs" / "straight" / "metrics.json").read_text())["metrics"]
    assert expected["mse"] < 0.05 and expected["samples"] == 8

    killed = mtp(["run", recipe, "output.name=killed", "--quiet"], tmp_path, {**env, "MTP_TOY_KILL_AFTER_STEPS": "15"})
    assert killed.returncode == 137
    run = tmp_path / "runs" / "killed"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    resumed = mtp(["run", recipe, "output.name=killed", "--resume", "--quiet"], tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["metrics"] == expected

    weights = tmp_path / "runs" / "straight" / "model.safetensors"
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["kwargs"] == {"hidden": 1, "bias": True}        # recorded from the constructor, defaults too
    inputs = tmp_path / "in"
    inputs.mkdir()
    np.save(inputs / "x.npy", np.array([0.5], np.float32))
    predicted = mtp(["predict", TASK, "-w", weights, "-i", inputs, "-o", tmp_path / "pred", "--quiet"], tmp_path, env)
    assert predicted.returncode == 0, predicted.stderr
    assert abs(float(np.load(tmp_path / "pred" / "x_pred.npy")[0]) - 2.5) < 0.3
    evaluated = mtp(["eval", TASK, "-w", weights, "-d", data], tmp_path, env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["mse"] == pytest.approx(expected["mse"], rel=1e-6)
    info = mtp(["info", weights], tmp_path, env)
    assert json.loads(info.stdout)["task"] == TASK


def test_predict_shards_a_folder_across_two_processes(tmp_path):
    """--devices 2 runs two gloo processes under torchrun: each takes every other item and resumes on its own;
    one failures.json lists the failures of both."""
    env = plugin_env(tmp_path)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        np.save(src / f"s{i}.npy", np.array([float(i)], np.float32))
    (src / "s5.npy").write_bytes(b"broken")
    out = tmp_path / "out"
    args = ["predict", TASK, "-i", src, "-o", out, "--devices", "2", "--quiet"]
    first = mtp(args, tmp_path, env)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "5 items done" in first.stdout and "1 failed" in first.stdout and "by 2 processes" in first.stdout
    assert sorted(p.name for p in out.glob("*_pred.npy")) == [f"s{i}_pred.npy" for i in range(5)]
    failures = json.loads((out / "failures.json").read_text())
    assert [f["input"] for f in failures["failed"]] == [str(src / "s5.npy")] and failures["processes"] == 2
    assert not list(out.glob(".failures.rank*"))
    (src / "s5.npy").unlink()
    (out / "s3_pred.txt").unlink()
    again = mtp(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 items done" in again.stdout and "4 already done" in again.stdout
    assert not (out / "failures.json").exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
