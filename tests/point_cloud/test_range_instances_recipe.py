"""The learned mOSD instance segmentation as a recipe of point_cloud_segmentation
(recipes/point_cloud/range_unet_mosd_instances.yaml): `mtp run` on two small synthetic organised scans in the mOSD
layout, the exported model through Pipeline(weights=...), and the recipe's agreement with
benchmarks/mosd_instances.py (its defaults) and benchmarks/mosd_geometric_baseline.py (its scorer)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtp.config import load_recipe
from mtp.datasets.point_cloud import PointCloud, read_points, write_pcd
from mtp.pipeline import Pipeline
from mtp.pipelines.point_cloud import range_instances as ri

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "point_cloud" / "range_unet_mosd_instances.yaml"
H, W = 48, 64          # at half resolution 24 x 32: multiples of the tiny U-Net's 2
FOCAL = 400.0          # 2.5 mm between pixels at 1 m: under the grouping's 1 cm edges


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def _scan(seed: int) -> PointCloud:
    """A tilted table 1 m from a pinhole camera with two touching boxes (mOSD labels: table 1, objects 20 and
    30) and NaN holes labelled 0, as an organised W x H cloud with colours."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - (W - 1) / 2) / FOCAL, (v - (H - 1) / 2) / FOCAL, np.ones_like(u)], axis=-1)
    normal = np.array([0.0, -0.5, -1.0]) / np.linalg.norm([0.0, -0.5, -1.0])
    depth = np.ones((H, W))
    label = np.ones((H, W), np.uint32)
    colors = np.broadcast_to(np.array([200, 190, 170], np.uint8), (H, W, 3)).copy()
    c0 = 14 + seed % 4
    for raw, (r0, r1, a, b), height, colour in ((20, (12, 36, c0, c0 + 18), 0.10, (200, 30, 30)),
                                                 (30, (12, 36, c0 + 18, c0 + 36), 0.10, (30, 30, 200))):
        depth[r0:r1, a:b] -= height
        label[r0:r1, a:b] = raw
        colors[r0:r1, a:b] = colour
    points = rays * (-depth / (rays @ normal))[..., None]
    holes = rng.random((H, W)) < 0.03
    points[holes] = np.nan
    label[holes] = 0
    return PointCloud(points.reshape(-1, 3), {"colors": colors.reshape(-1, 3), "label": label.reshape(-1)},
                      width=W, height=H)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """`mtp run` of the recipe on learn0 + learn1 (train) and test0 + test16 (test), a few steps, tiny U-Net."""
    from mtp.engine import run

    tmp = tmp_path_factory.mktemp("range_recipe")
    root = tmp / "mOSD"
    for folder, names in (("learn", ("learn0", "learn1")), ("test", ("test0", "test16"))):
        (root / folder).mkdir(parents=True)
        for seed, name in enumerate(names):
            write_pcd(root / folder / f"{name}.pcd", _scan(seed + (2 if folder == "test" else 0)))
    recipe = load_recipe(RECIPE, [f"data.root={root}", "train.max_steps=3", "backbone.kwargs.widths=[4, 8]",
                                  f"output.dir={tmp / 'runs'}", "output.name=range"])
    result = run(recipe, progress=False)
    assert result["metrics"]["samples"] == 2
    return tmp / "runs" / "range"


def test_recipe_writes_learned_and_baseline_figures(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for prefix in ("", "baseline/", "boxes/", "stacked/", "baseline/boxes/"):
        for key in ("matched_iou", "matched_iou_objects_only", "over_segmented", "under_segmented", "iou_table",
                    "iou_object", "miou", "scans"):
            assert prefix + key in metrics, prefix + key
    assert metrics["scans"] == 2 and metrics["boxes/scans"] == metrics["stacked/scans"] == 1
    assert metrics["reference_objects"] == metrics["baseline/reference_objects"] == 4
    # the baseline cannot split two boxes of one height that touch: one object each, under-segmented
    assert metrics["baseline/predicted_objects"] == 2 and metrics["baseline/under_segmented"] == 2
    assert metrics["baseline/miou"] > 0.95
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "renders" / "test0.png").is_file()


def test_exported_model_labels_every_point(run_dir, tmp_path):
    pipe = Pipeline("point_cloud_segmentation", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.grid_input and pipe.class_names == ["table", "object"]
    cloud = _scan(5)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_pcd(inputs / "organised.pcd", cloud)
    valid = np.isfinite(cloud.points).all(1)
    unorganised = PointCloud(cloud.points[valid], {"colors": cloud.fields["colors"][valid]})
    write_pcd(inputs / "unorganised.pcd", unorganised)
    report = pipe(inputs, output=tmp_path / "out")
    assert report.ok
    out = read_points(tmp_path / "out" / "organised.pcd")
    assert (out.width, out.height) == (W, H) and (tmp_path / "out" / "organised.png").is_file()
    pred, instance = out.fields["pred"], out.fields["instance"]
    assert (pred[~valid] == -1).all() and (instance[~valid] == -1).all()
    assert np.isin(pred[valid], [0, 1]).all() and ((pred == 1) == (instance >= 0)).all()
    # an unorganised cloud is laid on the Kinect grid: every (finite) point labelled
    listed = read_points(tmp_path / "out" / "unorganised.pcd")
    assert len(listed) == valid.sum() and np.isin(listed.fields["pred"], [0, 1]).all()
    assert ((listed.fields["pred"] == 1) == (listed.fields["instance"] >= 0)).all()


def test_recipe_is_the_benchmark_fit():
    recipe = load_recipe(RECIPE)
    args = _benchmark("mosd_instances").parse_args([])
    train = recipe.train
    assert (train.max_steps, train.batch_size, train.lr, train.weight_decay, train.seed, train.threads) == (
        args.steps, args.batch_size, args.lr, args.weight_decay, args.seed, args.threads)
    assert (train.optimizer, train.scheduler) == ("adam", "cosine")        # what train_model does
    kwargs = recipe.backbone.kwargs
    assert (kwargs["in_channels"], kwargs["out_channels"], tuple(kwargs["widths"])) == (
        ri.IN_CHANNELS, ri.OUT_CHANNELS, ri.WIDTHS)
    assert recipe.data.name == "mosd" and recipe.data.kwargs == {"merge_parts": False}
    assert recipe.eval.split == "test" and recipe.data.root == "pointcloud/mOSD"


def test_benchmarks_score_with_the_package_scorer():
    """The baseline benchmark, mosd_instances.py and the recipe flow share one mOSD scorer (no copies)."""
    from mtp.pipelines.point_cloud import metrics

    for name in ("mosd_geometric_baseline", "mosd_instances"):
        bench = _benchmark(name)
        assert (bench.group_of, bench.score_scan, bench.summarise) == (
            metrics.mosd_group_of, metrics.score_mosd_scan, metrics.summarise_mosd_scans)
    assert [metrics.mosd_group_of(s, i) for s, i in (("test", "test16"), ("learn", "learn20"), ("test", "x"))] == [
        "stacked", "stacked", "other"]
