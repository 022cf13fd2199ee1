"""Learned object instance segmentation of mOSD (``mtp.pipelines.point_cloud.range_instances``: a range-image
U-Net, ``mtp.backbones.range_unet.RangeUNet``, predicting table / object / object boundary per pixel, then
grouping) trained on the 20 learn/ scans, and scored beside the geometric baseline in the same run.

    OMP_NUM_THREADS=1 MTP_DATA_DIR=../shared/data python benchmarks/mosd_instances.py          # train + test
    OMP_NUM_THREADS=1 MTP_DATA_DIR=../shared/data python benchmarks/mosd_instances.py \\
        --weights runs/mosd_range_unet/model.pt                                             # test only
    OMP_NUM_THREADS=1 MTP_DATA_DIR=../shared/data python benchmarks/mosd_instances.py --splits learn \\
        --holdout learn7 learn20 learn28 learn39 --run-dir runs/mosd_range_unet_val   # learn scans left out

``mtp run recipes/point_cloud/range_unet_mosd_instances.yaml`` is the same fit and the same scoring through the
``point_cloud_segmentation`` pipeline (RangeUNet's ``input_format = "organised_grid"``); its defaults are this
script's, both from ``range_instances``' constants (STEPS, BATCH_SIZE, LR, WEIGHT_DECAY, SEED, WIDTHS).

Training (``range_instances.train_model``, everything fixed a priori, see that module's docstring): the learn/
scans less ``--holdout`` (none by default), one thread, seed 0, ``--steps`` 3000 Adam steps (lr 2e-3, cosine,
weight decay 1e-4) of 4 random 128 x 160 crops of the 240 x 320 grids: 0.15-0.7 s a step on one CPU thread
(measured here on a shared machine), so 8-35 minutes, about the 30-minute CPU budget at worst. The weights
(``model.pt``: the state dict, widths and steps) and the training log go to ``--run-dir`` (under runs/, never
committed).

The one check made before the test run, on learn scans only: trained on 16 learn scans with the middle scan of
each README group held out (learn7, learn20, learn28, learn39: a rule fixed before any result), the held-out four
scored matched IoU 0.918 (baseline 0.685; boxes 0.984 / 0.977, stacked 0.982 / 0.250, occluded 0.978 / 0.972,
cylindric 0.728 / 0.542) and mIoU 0.989 / 0.969, with the settings above; the test run keeps them all.

Scoring: the protocol of ``benchmarks/mosd_geometric_baseline.py`` (``mtp.pipelines.point_cloud.metrics``' mOSD scorer,
which that benchmark uses too), so
the references are mOSD's modified labels (``MOSD(merge_parts=False)``: each disjoint object part its own
reference object, table parts merged into the table) and the figures are those of that benchmark. The baseline
runs with that benchmark's defaults. Output: one JSON line per (method, scan), then per (method, split, group)
and (method, split) summaries, a ``delta`` line per group (learned minus baseline matched IoU), and a last line
with the peak RSS and each method's points per second (every point of each cloud as stored, an organised
cloud's NaN holes included, over the method's own seconds: features, plane, network and grouping for the learned
one; reading the file excluded). test43 is stored unorganised (its valid points only); the learned method lays
it back on the Kinect grid first (``range_instances.organise``), the baseline needs no grid.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mtp.backbones.range_unet import RangeUNet
from mtp.datasets.point_cloud.layouts import MOSD, MOSD_INVALID_LABEL
from mtp.pipelines.point_cloud import range_instances as ri
from mtp.pipelines.point_cloud.geometric import plane_and_clusters
from mtp.pipelines.point_cloud.metrics import ConfusionMatrix, InstanceSegmentationMeter
from mtp.pipelines.point_cloud.metrics import mosd_group_of as group_of
from mtp.pipelines.point_cloud.metrics import score_mosd_scan as score_scan
from mtp.pipelines.point_cloud.metrics import summarise_mosd_scans as summarise


def train(args, run_dir: Path) -> RangeUNet:
    dataset = MOSD(args.root, "learn", merge_parts=False)
    scans, start = [], time.perf_counter()
    for i in range(len(dataset)):
        item = dataset[i]
        if item["id"] in args.holdout:
            continue
        scans.append(ri.prepare_item(item))
    print(json.dumps({"prepared_scans": len(scans), "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    torch.manual_seed(args.seed)
    model = RangeUNet(ri.IN_CHANNELS, ri.OUT_CHANNELS, ri.WIDTHS)
    log = open(run_dir / "train.log", "w")

    def both(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    start = time.perf_counter()
    losses = ri.train_model(model, scans, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, seed=args.seed, log_every=50, log=both)
    seconds = time.perf_counter() - start
    torch.save({"state_dict": model.state_dict(), "widths": ri.WIDTHS, "steps": args.steps,
                "holdout": list(args.holdout)}, run_dir / "model.pt")
    both(json.dumps({"trained_steps": args.steps, "train_seconds": round(seconds, 1),
                     "final_loss": round(float(np.mean(losses[-50:])), 4), "weights": str(run_dir / "model.pt")}))
    log.close()
    return model


def load(path: str) -> RangeUNet:
    saved = torch.load(path, map_location="cpu")
    model = RangeUNet(ri.IN_CHANNELS, ri.OUT_CHANNELS, tuple(saved["widths"]))
    model.load_state_dict(saved["state_dict"])
    return model


def evaluate(args, model: RangeUNet) -> None:
    methods = {
        "range_unet": lambda a: ri.segment(model, a["points"], a["colors"], a["width"], a["height"]),
        "geometric": lambda a: plane_and_clusters(a["points"]),
    }
    throughput = {m: [0, 0.0] for m in methods}
    for split in args.splits:
        dataset = MOSD(args.root, split, merge_parts=False)
        rows = {m: {} for m in methods}
        accumulators = {m: {} for m in methods}

        def accumulator(method, key):
            return accumulators[method].setdefault(key, (InstanceSegmentationMeter(ignore_reference=range(10)),
                                                         ConfusionMatrix(2, ignore_index=MOSD_INVALID_LABEL)))

        for i in range(len(dataset)):
            item = dataset[i]
            if split == "learn" and args.holdout and item["id"] not in args.holdout:
                continue                          # learn scans the model trained on are not scored
            a = ri.scan_arrays(item)
            group = group_of(split, item["id"])
            for method, run in methods.items():
                start = time.perf_counter()
                semantic, instance = run(a)
                seconds = time.perf_counter() - start
                throughput[method][0] += len(a["points"])
                throughput[method][1] += seconds
                scored = (semantic, instance, a["labels"], a["raw"], a["valid"])
                row = score_scan(*scored, *accumulator(method, group))
                score_scan(*scored, *accumulator(method, "all"))
                row = {"method": method, "split": split, "id": item["id"], "group": group, **row,
                       "seconds": round(seconds, 3), "points": int(len(a["points"])),
                       "valid_points": int(a["valid"].sum())}
                rows[method].setdefault(group, []).append(row)
                rows[method].setdefault("all", []).append(row)
                print(json.dumps(row), flush=True)
        groups = [g for g in rows["range_unet"] if g != "all"] + ["all"]     # the split-wide line last
        summaries = {}
        for method in methods:
            for group in groups:
                summaries[method, group] = summarise(rows[method][group], *accumulators[method][group])
                print(json.dumps({"method": method, "summary": f"{split}/{group}", **summaries[method, group]}),
                      flush=True)
        for group in groups:
            learned, baseline = summaries["range_unet", group], summaries["geometric", group]
            print(json.dumps({"delta": f"{split}/{group}",
                              "matched_iou": learned["matched_iou"] - baseline["matched_iou"],
                              "miou": learned["miou"] - baseline["miou"]}), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux
    print(json.dumps({"peak_rss_mib": round(peak, 1),
                      "points_per_second": {m: round(n / s, 1) if s else None for m, (n, s) in throughput.items()}}),
          flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (module docstring); its defaults are ``range_instances``' constants."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="mOSD folder (default $MTP_DATA_DIR/pointcloud/mOSD)")
    parser.add_argument("--splits", nargs="+", default=["test"], choices=["test", "learn"])
    parser.add_argument("--weights", default=None, help="evaluate this model.pt instead of training one")
    parser.add_argument("--run-dir", default="runs/mosd_range_unet")
    parser.add_argument("--holdout", nargs="*", default=[], help="learn scan ids left out of training; with "
                                                                   "--splits learn, only they are scored")
    parser.add_argument("--steps", type=int, default=ri.STEPS)
    parser.add_argument("--batch-size", type=int, default=ri.BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=ri.LR)
    parser.add_argument("--weight-decay", type=float, default=ri.WEIGHT_DECAY)
    parser.add_argument("--seed", type=int, default=ri.SEED)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"args": vars(args)}), flush=True)
    if args.weights:
        model = load(args.weights)
    else:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        model = train(args, run_dir)
    evaluate(args, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
