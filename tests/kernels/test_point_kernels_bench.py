"""benchmarks/point_kernels_bench.py end to end at a small scale: every implementation (the plain-torch
reference, our dispatch, open3d's own FPS / kNN / fixed-radius search) runs in its own child process and gives the
reference's output, so the benchmark's speed figures compare equal work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_implementation_matches_the_reference_on_small_clouds():
    pytest.importorskip("open3d")
    command = [sys.executable, str(REPO / "benchmarks" / "point_kernels_bench.py"), "--scale", "0.02",
               "--cases", "fps_16k_2048", "knn_16k_k16", "ball_16k_32"]
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         timeout=300)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert {(r["case"], r["impl"]) for r in records} == {(c, i) for c in ("fps_16k_2048", "knn_16k_k16",
                                                                          "ball_16k_32")
                                                          for i in ("reference", "dispatch", "open3d")}
    for record in records:
        assert "error" not in record, record
        assert record["seconds"] > 0 and record["params"]["n"] == 320
        if record["impl"] != "reference":
            assert record["equals_reference"] is True, record
