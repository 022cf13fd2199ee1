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

Implementations: "reference" (plain torch), "dispatch" (ours), "open3d" (open3d's own equivalents, see
_build_open3d). Outputs compared: FPS the chosen set of points (open3d returns them in index order, not in
the order chosen), kNN the neighbour indices, ball query the (index, count) pair.

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
    "fps_16k_2048": dict(op="fps", n=16_000, npoint=2048),
    "fps_40k_4096": dict(op="fps", n=40_000, npoint=4096),
    "fps_120k_8192": dict(op="fps", n=120_000, npoint=8192),
    "knn_16k_k16": dict(op="knn", n=16_000, m=1024, k=16),
    "knn_40k_k16": dict(op="knn", n=40_000, m=1024, k=16),
    "knn_120k_k16": dict(op="knn", n=120_000, m=1024, k=16),
    "ball_16k_32": dict(op="ball", n=16_000, m=1024, nsample=32),
    "ball_40k_32": dict(op="ball", n=40_000, m=1024, nsample=32),
    "ball_120k_32": dict(op="ball", n=120_000, m=1024, nsample=32),
}
IMPLS = ("reference", "dispatch", "open3d")


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
    if impl == "open3d":
        return _build_open3d(params, xyz)
    if op == "fps":
        fn = farthest_point_sample_reference if impl == "reference" else farthest_point_sample
        # the chosen points in index order: open3d returns them so (the equality is of the chosen set)
        return [xyz], lambda: (xyz[0, fn(xyz, params["npoint"])[0].sort().values],)
    query = xyz[:, : params["m"]].contiguous()
    if op == "knn":
        fn = knn_reference if impl == "reference" else knn
        return [xyz, query], lambda: fn(query, xyz, params["k"])[:1]
    fn = ball_query_reference if impl == "reference" else ball_query
    return [xyz, query], lambda: fn(query, xyz, _radius(params), params["nsample"])


def _radius(params: dict) -> float:
    return (2 * params["nsample"] / (params["n"] * 4 / 3 * math.pi)) ** (1 / 3)


def _build_open3d(params: dict, xyz: torch.Tensor):
    """open3d's own equivalents (CPU): the tensor point cloud's farthest_point_down_sample (start index 0), and
    core.nns.NearestNeighborSearch's knn_search and fixed_radius_search (index building inside the timed call,
    as our kernels build nothing beforehand). The ball query keeps the first nsample hits in index order and
    pads with the first hit, PointNet++'s convention, so that all three give the same output."""
    import numpy as np
    import open3d as o3d

    points = o3d.core.Tensor(xyz[0].cpu().numpy())
    op = params["op"]
    if op == "fps":
        cloud = o3d.t.geometry.PointCloud(points)
        return [xyz], lambda: (torch.from_numpy(
            cloud.farthest_point_down_sample(params["npoint"], start_index=0).point.positions.numpy()),)
    query = o3d.core.Tensor(xyz[0, : params["m"]].cpu().numpy())

    def knn_call():
        search = o3d.core.nns.NearestNeighborSearch(points)
        search.knn_index()
        index, _ = search.knn_search(query, params["k"])
        return (torch.from_numpy(index.numpy().astype(np.int64))[None],)

    def ball_call():
        search = o3d.core.nns.NearestNeighborSearch(points)
        radius = _radius(params)
        search.fixed_radius_index(radius)
        index, _, splits = search.fixed_radius_search(query, radius, sort=False)
        index, splits = index.numpy().astype(np.int64), splits.numpy()
        nsample, m = params["nsample"], params["m"]
        out = np.zeros((m, nsample), np.int64)
        count = np.minimum(np.diff(splits), nsample)
        for row in range(m):  # per query: its hits sorted into index order, the first nsample kept
            hits = np.sort(index[splits[row]:splits[row + 1]])[:nsample]
            if len(hits):
                out[row, :len(hits)], out[row, len(hits):] = hits, hits[0]
        return torch.from_numpy(out)[None], torch.from_numpy(count)[None]

    return [xyz], knn_call if op == "knn" else ball_call


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
