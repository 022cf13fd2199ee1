"""Point-cloud kernels (mtp.kernels.points): our dispatch (fast torch path on CPU, Triton on CUDA) vs the references.

    python benchmarks/point_kernels_bench.py                                # every case, CPU, 1 thread
    python benchmarks/point_kernels_bench.py --cases fps_100k_8192 --impls dispatch --threads 2
    python benchmarks/point_kernels_bench.py --scale 0.01                   # every case shrunk (smoke test)
    python benchmarks/point_kernels_bench.py --device cuda

Prints one JSON line per (case, implementation): seconds of one call (median of --repeat calls), peak extra
memory of the first call, and whether the result equals the reference's (SHA-256 of the outputs, computed in
the parent from each child's digest). Every measurement runs in a fresh subprocess. Peak memory on CPU is the
rise of the process's maximum resident set over the first call; on CUDA it is torch.cuda.max_memory_allocated
above the inputs.

Clouds are B=1, uniform in the unit cube. Queries of knn/ball_query are the cloud's first M points (the
usual centres-after-FPS setting, M = 1024). The references build a full [M, N, 3] difference table (knn: about
M*N*32 bytes at the peak, 1.2 GiB at N=40k and 3 GiB at N=100k), so run them only with the memory to spare.
The ball radius gives about 2*nsample expected points per ball.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from mtp.kernels.points import (
    ball_query,
    ball_query_reference,
    farthest_point_sample,
    farthest_point_sample_reference,
    knn,
    knn_reference,
)

CASES = {
    "fps_40k_4096": dict(op="fps", n=40_000, npoint=4096),
    "fps_100k_8192": dict(op="fps", n=100_000, npoint=8192),
    "knn_40k_k16": dict(op="knn", n=40_000, m=1024, k=16),
    "knn_100k_k16": dict(op="knn", n=100_000, m=1024, k=16),
    "ball_40k_32": dict(op="ball", n=40_000, m=1024, nsample=32),
    "ball_100k_32": dict(op="ball", n=100_000, m=1024, nsample=32),
}
IMPLS = ("reference", "dispatch")


def _scaled(params: dict, scale: float) -> dict:
    out = dict(params)
    for key in ("n", "npoint", "m"):
        if key in out:
            out[key] = max(8, int(out[key] * scale))
    return out


def _build(params: dict, impl: str, device: str):
    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(1, params["n"], 3, generator=gen).to(device)
    op = params["op"]
    if op == "fps":
        fn = farthest_point_sample_reference if impl == "reference" else farthest_point_sample
        return [xyz], lambda: (fn(xyz, params["npoint"]),)
    query = xyz[:, : params["m"]].contiguous()
    if op == "knn":
        fn = knn_reference if impl == "reference" else knn
        return [xyz, query], lambda: fn(query, xyz, params["k"])
    radius = (2 * params["nsample"] / (params["n"] * 4 / 3 * math.pi)) ** (1 / 3)
    fn = ball_query_reference if impl == "reference" else ball_query
    return [xyz, query], lambda: fn(query, xyz, radius, params["nsample"])


def _digest(outputs) -> str:
    h = hashlib.sha256()
    for t in outputs:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _child(case: str, impl: str, device: str, scale: float, repeat: int) -> None:
    params = _scaled(CASES[case], scale)
    inputs, call = _build(params, impl, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    outputs = None
    for _ in range(repeat):
        start = time.perf_counter()
        outputs = call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            peak = ((torch.cuda.max_memory_allocated() - base) if device == "cuda"
                    else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024)
    print(json.dumps(dict(case=case, impl=impl, device=device, threads=torch.get_num_threads(),
                          params={k: v for k, v in params.items() if k != "op"}, op=params["op"],
                          seconds=round(statistics.median(times), 4), first_call_s=round(times[0], 4),
                          peak_mib=round(peak / 2**20, 1), digest=_digest(outputs))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply N, npoint and M (smoke tests)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _child(*args.child, args.device, args.scale, args.repeat)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for case in args.cases:
        digests = {}
        for impl in args.impls:
            command = [sys.executable, __file__, "--child", case, impl, "--device", args.device, "--threads",
                       str(args.threads), "--scale", str(args.scale), "--repeat", str(args.repeat)]
            run = subprocess.run(command, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                print(json.dumps(dict(case=case, impl=impl, error=run.stderr.strip().splitlines()[-1:])), flush=True)
                continue
            record = json.loads(run.stdout.strip().splitlines()[-1])
            digests[impl] = record.pop("digest")
            if "reference" in digests and impl != "reference":
                record["equals_reference"] = digests[impl] == digests["reference"]
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
