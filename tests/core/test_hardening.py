"""Data safety and untrusted files in the engine: planted checkpoints never run, a resumed run keeps its record."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the toy plugin's helpers live beside this file
from test_contract import RECIPE, mtp, plugin_env, write_pairs  # noqa: E402


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload(marker)}, f)


@pytest.fixture
def finished_run(tmp_path):
    env = plugin_env(tmp_path)
    data = write_pairs(tmp_path / "data")
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(root=data, out=tmp_path / "runs").replace("epochs: 6", "epochs: 2"))
    done = mtp(["run", recipe, "--quiet"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    return tmp_path, env, recipe, tmp_path / "runs" / "toy" / "checkpoints"


@pytest.mark.parametrize("which", ["last.ckpt", "best.ckpt"])
def test_planted_checkpoints_never_run(finished_run, which):
    tmp_path, env, recipe, ckpts = finished_run
    marker = tmp_path / "pwned"
    plant(ckpts / which, marker)
    resumed = mtp(["run", recipe, "--resume", "--quiet"], tmp_path, env)
    assert resumed.returncode != 0 and not marker.exists()
    assert "weights_only=False" not in resumed.stderr + resumed.stdout


def test_a_resume_with_other_settings_is_refused(finished_run):
    tmp_path, env, recipe, _ = finished_run
    record = (tmp_path / "runs" / "toy" / "config.yaml").read_text()
    changed = mtp(["run", recipe, "--resume", "train.lr=0.5", "--quiet"], tmp_path, env)
    assert changed.returncode == 2 and "train.lr: 0.2 in the run, 0.5 now" in changed.stderr
    assert (tmp_path / "runs" / "toy" / "config.yaml").read_text() == record
    same = mtp(["run", recipe, "--resume", "train.threads=2", "--quiet"], tmp_path, env)  # speed only: allowed
    assert same.returncode == 0, same.stderr


def test_resume_of_a_missing_run_says_so(tmp_path):
    env = plugin_env(tmp_path)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(root=write_pairs(tmp_path / "data"), out=tmp_path / "runs")
                      .replace("epochs: 6", "epochs: 1"))
    proc = mtp(["run", recipe, "--resume"], tmp_path, env)                    # with progress bars
    assert proc.returncode == 0 and "no run folder" in proc.stderr and "starting the run from the beginning" in proc.stderr
    assert json.loads(proc.stdout)["mse"] >= 0                               # stdout holds only the result JSON


def test_a_mid_epoch_checkpoint_is_not_resumed_silently(tmp_path):
    env = plugin_env(tmp_path)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE.format(root=write_pairs(tmp_path / "data"), out=tmp_path / "runs")
                      .replace("threads: 1,", "threads: 1, checkpoint_every_steps: 4,"))
    killed = mtp(["run", recipe, "--quiet"], tmp_path, {**env, "MTP_TOY_KILL_AFTER_STEPS": "10"})
    assert killed.returncode == 137
    refused = mtp(["run", recipe, "--resume", "--quiet"], tmp_path, env)
    assert refused.returncode == 2 and re.search(r"saved mid-epoch \(batch [1-5] of 6\)", refused.stderr)
    allowed = mtp(["run", recipe, "--resume", "--allow-inexact-resume", "--quiet"], tmp_path, env)
    assert allowed.returncode == 0, allowed.stderr
    record = json.loads((tmp_path / "runs" / "toy" / "metrics.json").read_text())
    assert record["resumed_from"]["mid_epoch"] is True and record["resumed_from"]["global_step"] % 6 != 0
