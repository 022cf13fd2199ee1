"""Run one benchmark case in a fresh interpreter, so its peak RSS (ru_maxrss from os.wait4) is its own.

The child is `python SCRIPT --worker SPEC OUT`: it reads the case from SPEC (JSON) and writes its result to OUT.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_worker(python: str, script: str, spec: dict, case_dir: Path, threads: int, extra_env: dict | None = None,
               cwd: str | Path | None = None) -> dict:
    """The child's result, plus total_s, cpu_s, peak_rss_mib and the load averages around it."""
    case_dir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = case_dir / "spec.json", case_dir / "result.json", case_dir / "log.txt"
    spec_path.write_text(json.dumps(spec))
    n = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
           "NUMBA_NUM_THREADS": n, "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})}
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([python, str(script), "--worker", str(spec_path), str(out_path)],
                                env=env, cwd=cwd or case_dir, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    if code != 0 or not out_path.is_file():
        tail = log_path.read_text()[-6000:]
        raise RuntimeError(f"{spec['case']}: the child failed (exit {code}); its output ends:\n{tail}")
    result = json.loads(out_path.read_text())
    result.update(total_s=round(wall, 2), cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
                  peak_rss_mib=round(usage.ru_maxrss / 1024, 1),   # Linux: KiB
                  loadavg_before=[round(x, 2) for x in load_before], loadavg_after=[round(x, 2) for x in load_after])
    return result


def state_dict_hash(state_dict) -> str:
    """sha256 over every entry's name, dtype, shape and bytes, by name."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(state_dict.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def peer_python(env_script: Path, given: str | None, who: str) -> str:
    """The interpreter of a peer benchmark environment: `given`, else what `bash env_script --python` prints
    (the script builds the environment once)."""
    if given:
        return given
    proc = subprocess.run(["bash", str(env_script), "--python"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{who}: the peer environment ({env_script.name}) could not be set up; pass --peer-python")
    return proc.stdout.strip().splitlines()[-1]


def torch_versions() -> dict:
    """torch and numpy versions and torch's thread count, for a case line."""
    import numpy
    import torch

    return {"torch": torch.__version__, "numpy": numpy.__version__, "torch_threads": torch.get_num_threads()}
