"""The geometric baseline (``mtp.pipelines.point_cloud.geometric.plane_and_clusters``: RANSAC dominant plane, then
DBSCAN) on mOSD, scored with mtp's point-cloud metrics.

    OMP_NUM_THREADS=1 MTP_DATA_DIR=../shared/data python benchmarks/mosd_geometric_baseline.py
    python benchmarks/mosd_geometric_baseline.py --splits test learn --eps 0.015

Prints one JSON line per scan, then one summary line per (split, group) and per split, then one line with the
process's peak RSS. References are mOSD's modified labels (``MOSD(merge_parts=False)``): each disjoint part of an
object is its own reference object (README: a model-free method cannot join them), table parts 1-9 are the
table, 0 is invalid.

Per scan:
- ``matched_iou``: Hungarian one-to-one matching (``instance_scores``) of the predicted objects to the reference
  instances, with the table as one more reference instance (its parts merged) so that table points a predicted
  object swallowed count in that object's union; the IoU of each reference *object*'s partner (0 when it has
  none) averaged over the scan's reference objects (the table is matched but not averaged).
- ``matched_iou_objects_only``: the same with the table's points left out of both sides
  (``ignore_reference`` = 0-9), as ``instance_scores``' own ``matched_iou``; over- and under-segmentation
  counts (``over_segmented`` reference objects, ``under_segmented`` predicted objects, 0.5 overlap), true
  positives (IoU > 0.5), reference and predicted object counts come from this call.
- ``iou_table``, ``iou_object``, ``miou``: per-point table-vs-object IoUs of the scan (``ConfusionMatrix``, the
  invalid points ignored; DBSCAN noise counts as table/background).
- ``seconds`` (the baseline alone, not the reading), ``points`` and ``valid_points``.

Summaries: ``matched_iou`` and ``matched_iou_objects_only`` are means over scans of the per-scan values (each
scan's mean over its own reference objects first, as the task's protocol says); ``pooled`` gives
``InstanceSegmentationMeter``'s pooled rates beside them (sum over all reference objects of the group, for
reference only); over/under counts are sums; table/object IoU and mIoU come from one confusion matrix summed
over the group's points. Groups follow the README: test 0-15 boxes, 16-23 stacked, 24-30 occluded, 31-42
cylindric, 43-54 mixed, 55-65 complex; learn 0-16 boxes, 17-24 stacked, 25-32 occluded, 33-44 cylindric.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from mtp.datasets.point_cloud.layouts import MOSD, MOSD_INVALID_LABEL
from mtp.pipelines.point_cloud.geometric import plane_and_clusters
from mtp.pipelines.point_cloud.metrics import ConfusionMatrix, InstanceSegmentationMeter
# the scorer of this protocol lives in the package (the recipe flow scores with it too)
from mtp.pipelines.point_cloud.metrics import mosd_group_of as group_of
from mtp.pipelines.point_cloud.metrics import score_mosd_scan as score_scan
from mtp.pipelines.point_cloud.metrics import summarise_mosd_scans as summarise

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="mOSD folder (default $MTP_DATA_DIR/pointcloud/mOSD)")
    parser.add_argument("--splits", nargs="+", default=["test"], choices=["test", "learn"])
    parser.add_argument("--distance-threshold", type=float, default=0.01)
    parser.add_argument("--num-iterations", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--min-points", type=int, default=10)
    parser.add_argument("--min-cluster-points", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = {"distance_threshold": args.distance_threshold, "ransac_n": 3, "num_iterations": args.num_iterations,
              "eps": args.eps, "min_points": args.min_points, "min_cluster_points": args.min_cluster_points,
              "seed": args.seed}
    print(json.dumps({"params": params}), flush=True)

    for split in args.splits:
        dataset = MOSD(args.root, split, merge_parts=False)
        rows_by_group: dict[str, list[dict]] = {}
        meters: dict[str, tuple] = {}
        all_rows = []
        split_meter = InstanceSegmentationMeter(ignore_reference=range(10))
        split_matrix = ConfusionMatrix(2, ignore_index=MOSD_INVALID_LABEL)
        for i in range(len(dataset)):
            item = dataset[i]
            points = item["points"].numpy()
            start = time.perf_counter()
            semantic, instance = plane_and_clusters(points, **params)
            seconds = time.perf_counter() - start
            group = group_of(split, item["id"])
            meter, matrix = meters.setdefault(group, (InstanceSegmentationMeter(ignore_reference=range(10)),
                                                      ConfusionMatrix(2, ignore_index=MOSD_INVALID_LABEL)))
            labels, raw, valid = item["labels"].numpy(), item["instance"].numpy(), item["valid"].numpy()
            row = score_scan(semantic, instance, labels, raw, valid, meter, matrix)
            # The same scan into the split-wide accumulators (scored again: instance_scores is cheap).
            score_scan(semantic, instance, labels, raw, valid, split_meter, split_matrix)
            row = {"split": split, "id": item["id"], "group": group, **row, "seconds": round(seconds, 3),
                   "points": int(len(points)), "valid_points": int(valid.sum())}
            rows_by_group.setdefault(group, []).append(row)
            all_rows.append(row)
            print(json.dumps(row), flush=True)
        for group, rows in rows_by_group.items():
            print(json.dumps({"summary": f"{split}/{group}", **summarise(rows, *meters[group])}), flush=True)
        print(json.dumps({"summary": f"{split}/all", **summarise(all_rows, split_meter, split_matrix)}), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux
    print(json.dumps({"peak_rss_mib": round(peak, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
