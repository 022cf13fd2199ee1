import json
import warnings

import numpy as np
import pytest
import torch

from mtp.datasets.point_cloud import PointCloud, read_points, write_pcd, write_ply, write_points
from mtp.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_SEG = dict(num_classes=2, in_channels=3, npoints=(32, 16, 8, 4), nsamples=(8, 8, 8, 4))
SMALL_CLS = dict(num_classes=3, in_channels=0, npoints=(32, 8), nsamples=(8, 8))


def _scene(seed=0, n_nan=40, side=1.2, spacing=0.03, organised=False) -> PointCloud:
    """A table plane z=0 with a box on it (mOSD README labels: 1 table, 21 object, 0 on NaN points)."""
    rng = np.random.default_rng(seed)
    g = np.arange(0, side, spacing)
    xx, yy = np.meshgrid(g, g)
    table = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], 1)
    b = np.arange(0, 0.2, spacing)
    bx, by, bz = np.meshgrid(b, b, b + spacing)
    box = np.stack([bx.ravel() + 0.5, by.ravel() + 0.5, bz.ravel()], 1)
    points = np.concatenate([table, box]) + rng.normal(0, 0.002, (len(table) + len(box), 3))
    labels = np.concatenate([np.ones(len(table)), np.full(len(box), 21)]).astype(np.uint32)
    nan_at = rng.choice(len(points), n_nan, replace=False)
    points[nan_at] = np.nan
    labels[nan_at] = 0
    colors = np.where(labels[:, None] == 21, [200, 30, 30], [90, 90, 90]).astype(np.uint8)
    n = len(points) - len(points) % 2 if organised else len(points)
    shape = dict(width=n // 2, height=2) if organised else {}
    return PointCloud(points[:n].astype(np.float32), {"label": labels[:n], "colors": colors[:n]}, **shape)


@pytest.fixture(scope="module")
def seg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Pipeline("point_cloud_segmentation", backbone="pointnet2_semseg_ssg", pretrained=False, device="cpu",
                        backbone_kwargs=SMALL_SEG, grid_size=0.05, max_points=128, class_names=["table", "object"])


def test_nan_points_are_labelled_invalid_and_every_point_gets_a_label(seg):
    cloud = _scene(n_nan=57)
    result = seg(cloud)
    pred = result["cloud"].fields["pred"]
    invalid = ~cloud.valid
    assert len(pred) == len(cloud) and pred.dtype == np.int32
    assert invalid.sum() == 57 and (pred[invalid] == -1).all()
    assert set(np.unique(pred[~invalid])) <= {0, 1}
    assert result["counts"]["invalid"] == 57 and sum(result["counts"].values()) == len(cloud)
    assert result["cloud"].fields["label"] is cloud.fields["label"]          # the input's fields are kept
    everything_nan = PointCloud(np.full((5, 3), np.nan, np.float32))
    assert (seg(everything_nan)["cloud"].fields["pred"] == -1).all()


def test_large_cloud_runs_in_covering_fragments_of_bounded_size(seg):
    from mtp.kernels import grid_sample
    from mtp.pipelines.point_cloud.pipeline import sphere_crops

    cloud = _scene()
    result = seg(cloud)
    assert result["sampled_points"] > 128                     # more than max_points after the grid sample
    assert result["fragments"] >= 2 * result["sampled_points"] / 128 - 1   # overlap 2: FPS seeds, then top-up
    assert result["max_fragment_points"] == 128 and result["covered"]
    xyz = torch.from_numpy(cloud.points[cloud.valid])
    sampled = xyz[grid_sample(xyz, 0.05, mode="center").index]
    crops = sphere_crops(sampled, 128, overlap=1.0)           # overlap 1: the top-up has to cover the rest
    hits = torch.zeros(len(sampled), dtype=torch.long)
    for crop in crops:
        assert len(crop) == 128 and len(crop.unique()) == 128
        hits[crop] += 1
    assert (hits > 0).all()
    assert len(sphere_crops(sampled[:100], 128)) == 1         # a small cloud is one forward, all of it
    with seg.options_for_call({"max_points": 4096}):
        whole = seg(cloud)
    assert whole["fragments"] == 1 and whole["max_fragment_points"] == whole["sampled_points"]


def test_voting_is_seeded_and_reported_beside_the_single_pass(seg):
    cloud = _scene(seed=1)
    plain = seg(cloud)
    voted = seg(cloud, votes=2)
    again = seg(cloud, votes=2)
    assert voted["votes"] == 2 and plain["votes"] == 0
    assert (voted["pred_single"] == plain["pred"]).all()      # the single pass is kept and reported apart
    assert (voted["pred"] == again["pred"]).all()             # seeded rotations and jitter
    assert (voted["pred"][~cloud.valid] == -1).all()


def test_folder_run_writes_outputs_reports_a_broken_file_and_never_overwrites(seg, tmp_path):
    src = tmp_path / "scans"
    src.mkdir()
    organised = _scene(seed=2, organised=True)
    write_pcd(src / "a.pcd", organised)
    write_ply(src / "b.ply", _scene(seed=3))
    (src / "broken.pcd").write_bytes(b"# .PCD v0.7\nFIELDS x y z\nSIZE 4 4\n")
    (src / "notes.md").write_text("not a cloud")
    out = tmp_path / "labelled"
    report = seg(src, output=out)
    assert report.items_written == 2 and [f.input for f in report.failures] == [str(src / "broken.pcd")]
    failures = json.loads((out / "failures.json").read_text())
    assert failures["failed"][0]["input"].endswith("broken.pcd") and failures["failed"][0]["stage"] == "load"
    back = read_points(out / "a.pcd")
    assert (back.width, back.height) == (organised.width, organised.height)
    assert set(back.fields) >= {"label", "colors", "pred"} and len(back) == len(organised)
    assert (back.fields["pred"][~organised.valid] == -1).all()
    assert read_points(out / "b.ply").fields["pred"].shape == (len(_scene(seed=3)),)
    for name in ("a.png", "b.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    stamp = (out / "a.pcd").stat().st_mtime_ns
    again = seg(src, output=out)
    assert sorted(again.skipped_existing) == [str(src / "a.pcd"), str(src / "b.ply")] and again.items_written == 0
    assert (out / "a.pcd").stat().st_mtime_ns == stamp
    result = seg(_scene(seed=2))
    with pytest.raises(FileExistsError):
        seg.save(result, [out / "a.pcd", out / "a.png"], overwrite=False)
    npy = seg(src / "a.pcd", output=tmp_path / "as_npy", format="npy", render=False)
    assert npy.ok and (tmp_path / "as_npy" / "a.npy").is_file()


def test_classification_writes_class_id_name_and_probabilities(tmp_path):
    from mtp.pipelines.point_cloud.pipeline import normalize_unit_sphere

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = Pipeline("point_cloud_classification", backbone="pointnet2_cls_ssg", pretrained=False, device="cpu",
                        backbone_kwargs=SMALL_CLS, num_points=64, class_names=["cup", "bowl", "vase"])
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(300, 3)).astype(np.float32) * [1, 2, 3] + 5
    src = tmp_path / "shapes"
    src.mkdir()
    np.savetxt(src / "thing.xyz", shape)
    report = pipe(src, output=tmp_path / "out")
    assert report.ok
    result = json.loads((tmp_path / "out" / "thing.json").read_text())
    assert result["class_name"] == ["cup", "bowl", "vase"][result["class_id"]]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["probability"] == max(result["probabilities"].values())
    xyz, feats = pipe.shape_points(shape)
    assert xyz.shape == (64, 3) and feats.shape == (64, 0)
    assert np.abs(xyz.mean(0)).max() < 0.2 and np.linalg.norm(xyz, axis=1).max() == pytest.approx(1.0, abs=1e-5)
    with pipe.options_for_call({"sampling": "first"}):
        first, _ = pipe.shape_points(shape)
    assert np.allclose(first, normalize_unit_sphere(shape[:64]), atol=1e-5)
    # training and evaluation hooks on ModelNet-style items (fixed-size shapes, collate_points batches)
    from mtp.pipelines.point_cloud.pipeline import _Shapes

    items = [{"points": torch.from_numpy(normalize_unit_sphere(rng.normal(size=(64, 3))).astype(np.float32)),
              "features": torch.zeros(64, 0), "label": k % 3, "id": f"s{k}"} for k in range(4)]
    pipe.model.train()
    loss = pipe.training_loss(_Shapes.collate(items))
    loss.backward()
    pipe.model.eval()
    assert torch.isfinite(loss)
    scores = pipe.evaluate(items)
    assert scores["samples"] == 4 and 0 <= scores["overall_accuracy"] <= 1 and "accuracy/cup" in scores


def test_metrics_accumulate_over_the_whole_split(seg):
    from mtp.pipelines.point_cloud.metrics import ConfusionMatrix
    from mtp.pipelines.point_cloud.pipeline import ClassificationAccuracy, SegmentationMetrics

    big_ref, big_pred = np.array([0] * 90 + [1] * 10), np.array([0] * 90 + [0] * 10)
    small_ref, small_pred = np.array([1, 1, -1]), np.array([1, 1, 0])
    metric = SegmentationMetrics(2, -1, ["table", "object"])
    metric.update([big_pred], [big_ref])
    metric.update([small_pred], [small_ref])
    out = metric.compute()
    pooled = ConfusionMatrix(2, -1).update(np.concatenate([big_pred, small_pred]), np.concatenate([big_ref, small_ref]))
    assert out["miou"] == pytest.approx(pooled.miou) and out["overall_accuracy"] == pytest.approx(92 / 102)
    assert out["iou/object"] == pytest.approx(2 / 12) and out["points"] == 102 and "vote/miou" not in out
    accuracy = ClassificationAccuracy(3)
    accuracy.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    accuracy.update(torch.tensor([[0.1, 0.9, 0.0]]), torch.tensor([1]))
    scores = accuracy.compute()
    assert scores["overall_accuracy"] == pytest.approx(2 / 3) and scores["mean_class_accuracy"] == pytest.approx(2 / 3)
    scenes = []
    for seed in (4, 5):
        cloud = _scene(seed=seed)
        from mtp.datasets.point_cloud.layouts import mosd_semantic

        scenes.append({"points": torch.from_numpy(cloud.points),
                       "features": torch.from_numpy(cloud.fields["colors"] / 255.0).float(),
                       "labels": torch.from_numpy(mosd_semantic(cloud.fields["label"])), "id": f"s{seed}"})
    scores = seg.evaluate(scenes)
    valid_points = sum(int((s["labels"] >= 0).sum()) for s in scenes)
    assert scores["samples"] == 2 and scores["points"] == valid_points
    assert 0 <= scores["miou"] <= 1 and 0 <= scores["overall_accuracy"] <= 1 and "iou/table" in scores


def _mosd_layout(root):
    for folder, seeds in (("learn", (10, 11)), ("test", (12,))):
        (root / folder).mkdir(parents=True)
        for k, seed in enumerate(seeds):
            write_points(root / folder / f"{folder}{k}.pcd", _scene(seed=seed, side=0.8), data="binary_compressed")
    return root


def test_recipe_trains_evaluates_and_exports_a_model_that_labels_files(tmp_path, monkeypatch):
    from mtp.config import load_recipe
    from mtp.engine import run

    root = _mosd_layout(tmp_path / "mOSD")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("pointnet2_mosd", [
        f"data.root={root}", "train.epochs=1", "train.batch_size=2", "train.threads=1", "options.max_points=96",
        "options.grid_size=0.05", "options.crops_per_scene=1", "backbone.kwargs.npoints=[32,16,8,4]",
        "backbone.kwargs.nsamples=[8,8,8,4]", "output.name=pc_tiny"])
    result = run(recipe, progress=False)
    metrics = result["metrics"]
    assert metrics["samples"] == 1 and 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["overall_accuracy"] <= 1.0
    assert {"iou/table", "iou/object"} <= set(metrics)
    run_dir = tmp_path / "runs" / "pc_tiny"
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == metrics
    assert (run_dir / "renders" / "test0.png").read_bytes()[:4] == b"\x89PNG"
    pipe = Pipeline("point_cloud_segmentation", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.config["max_points"] == 96 and pipe.class_names == ["table", "object"]
    report = pipe(root / "test", output=tmp_path / "labelled")
    assert report.ok and (tmp_path / "labelled" / "test0.pcd").is_file() and (tmp_path / "labelled" / "test0.png").is_file()
    assert pipe.evaluate(str(root), split="test")["miou"] == pytest.approx(metrics["miou"])
