"""ModelNet40 classification recipes (PointNet++ SSG as yanx27 trains it, GPSFormer with PointMLP's setup) and the
classifier's training-time augmentation, on tiny files written in the HDF5 release's layout."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mtp.config import load_recipe
from mtp.pipeline import Pipeline

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "point_cloud"
CLASSES = ("airplane", "bathtub", "bed")
POINTS = 64
# Widths and neighbour counts shrunk for 64 points; everything else is the recipe's.
TINY = {
    "pointnet2_ssg_modelnet40.yaml": ["backbone.kwargs.npoints=[32,8]", "backbone.kwargs.nsamples=[8,8]"],
    "gpsformer_modelnet40.yaml": ["backbone.kwargs.embed_dim=16", "backbone.kwargs.widths=[16,16,16]",
                                  "backbone.kwargs.num_points=[32,16,8]", "backbone.kwargs.k=8",
                                  "backbone.kwargs.nsamples=[4,4,4]", "backbone.kwargs.head_widths=[16]"],
}
# The sources' values: yanx27's train_classification.py / provider.py, PointMLP's main.py / data.py / cal_loss.
SOURCES = {
    "pointnet2_ssg_modelnet40.yaml": dict(
        backbone="pointnet2_cls_ssg", normalize=True, batch=24, optimizer="adam", lr=1e-3, weight_decay=1e-4,
        epochs=200, grad_clip=None, eval_batch=24, smoothing=0.0,
        augment=dict(augment_dropout=0.875, augment_scale=[0.8, 1.25], augment_anisotropic=False, augment_shift=0.1,
                     augment_shuffle=False),
        lr_at={0: 1e-3, 19: 1e-3, 20: 7e-4, 40: 4.9e-4, 199: 1e-3 * 0.7 ** 9}),
    "gpsformer_modelnet40.yaml": dict(
        backbone="gpsformer_cls", normalize=False, batch=32, optimizer="sgd", lr=0.1, weight_decay=2e-4,
        epochs=300, grad_clip=1.0, eval_batch=16, smoothing=0.2 * 40 / 39,
        augment=dict(augment_dropout=0.0, augment_scale=[2 / 3, 3 / 2], augment_anisotropic=True, augment_shift=0.2,
                     augment_shuffle=True),
        lr_at={0: 0.1, 150: 1e-3 + (0.1 - 1e-3) / 2, 300: 1e-3}),
}


def _shape(label: int, rng) -> np.ndarray:
    """A class-shaped cloud of POINTS points, centred and in the unit sphere as the release stores them."""
    points = rng.normal(size=(POINTS, 3)) * [(1, 1, 1), (2, 0.3, 0.3), (1.5, 1.5, 0.1)][label]
    points -= points.mean(0)
    return (points / np.linalg.norm(points, axis=1).max()).astype(np.float32)


def _release(root: Path) -> Path:
    """modelnet40_ply_hdf5_2048's layout: two train files (six shapes), one test file (three)."""
    root.mkdir()
    (root / "shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for name, labels in (("ply_data_train0", [0, 1, 2, 0]), ("ply_data_train1", [1, 2]), ("ply_data_test0", [2, 0, 1])):
        with h5py.File(root / f"{name}.h5", "w") as f:
            f.create_dataset("data", data=np.stack([_shape(k, rng) for k in labels]))
            f.create_dataset("label", data=np.array(labels, np.uint8)[:, None])
    (root / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n"
                                          "data/modelnet40_ply_hdf5_2048/ply_data_train1.h5\n")
    (root / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n")
    return root


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_recipe_resolves_with_its_sources_hyper_parameters(name):
    from mtp.config import check_kwargs
    from mtp.engine import _optimizer_and_schedule
    from mtp.pipelines.point_cloud.pipeline import PointCloudClassificationPipeline
    from mtp.registry import DATASETS

    want = SOURCES[name]
    recipe = load_recipe(RECIPES / name)
    assert recipe.task == "point_cloud_classification" and recipe.backbone.name == want["backbone"]
    assert recipe.backbone.kwargs == {"num_classes": 40, "in_channels": 0} and recipe.backbone.weights is None
    assert (recipe.data.name, recipe.data.root) == ("modelnet40_h5", "modelnet40_ply_hdf5_2048")
    assert recipe.data.kwargs == {"num_points": 1024, "normals": False, "normalize": want["normalize"]}
    check_kwargs(DATASETS.get("modelnet40_h5").load(), recipe.data.kwargs, "data.kwargs")
    t = recipe.train
    assert (t.epochs, t.batch_size, t.optimizer, t.lr, t.weight_decay) == (
        want["epochs"], want["batch"], want["optimizer"], want["lr"], want["weight_decay"])
    assert t.grad_clip == want["grad_clip"] and t.precision == "32-true" and t.max_steps == -1
    assert (recipe.eval.split, recipe.eval.batch_size, recipe.eval.options) == ("test", want["eval_batch"], {})
    assert "val" not in recipe.data.splits    # no validation split: the last epoch is tested, none is picked
    pipe = PointCloudClassificationPipeline.from_recipe(recipe)   # options validated, backbone built
    assert pipe.config["num_points"] == 1024 and pipe.config["augment"] is True
    augment = dict(want["augment"])
    assert pipe.config["augment_scale"] == pytest.approx(augment.pop("augment_scale"))
    assert {k: pipe.config[k] for k in augment} == augment
    assert pipe.config["label_smoothing"] == pytest.approx(want["smoothing"])
    assert pipe.num_classes == 40 and pipe.in_channels == 0
    # the schedule the engine builds from the recipe, per epoch
    param = torch.nn.Parameter(torch.zeros(1))
    built = _optimizer_and_schedule([param], t, steps_per_epoch=1)
    optimizer, schedule = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert built["lr_scheduler"]["interval"] == "epoch"
    lrs = []
    for _ in range(t.epochs + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    for epoch, lr in want["lr_at"].items():
        assert lrs[epoch] == pytest.approx(lr, rel=1e-6), epoch
    if t.optimizer == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9


def test_gpsformer_label_smoothing_equals_pointmlp_cal_loss():
    """PointMLP's cal_loss puts 1 - 0.2 on the true class and 0.2 / 39 on each other one."""
    torch.manual_seed(0)
    logits, gold = torch.randn(8, 40), torch.randint(0, 40, (8,))
    one_hot = torch.nn.functional.one_hot(gold, 40).float()
    target = one_hot * 0.8 + (1 - one_hot) * 0.2 / 39
    reference = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    smoothing = load_recipe(RECIPES / "gpsformer_modelnet40.yaml").options["label_smoothing"]
    ours = torch.nn.functional.cross_entropy(logits, gold, label_smoothing=smoothing)
    assert float(ours) == pytest.approx(float(reference), rel=1e-6)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_recipe_trains_on_a_tiny_release_and_exports_a_model_that_reloads(name, tmp_path, monkeypatch):
    from mtp.datasets.point_cloud.layouts import ModelNetH5
    from mtp.engine import run
    from mtp.pipelines.point_cloud.pipeline import _Shapes

    root = _release(tmp_path / "modelnet40_ply_hdf5_2048")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(RECIPES / name, [
        f"data.root={root}", f"data.kwargs.num_points={POINTS}", f"options.num_points={POINTS}",
        "backbone.kwargs.num_classes=3", "train.epochs=1", "train.batch_size=3", "train.threads=1",
        "train.accelerator=cpu", "eval.batch_size=3", "output.name=tiny", *TINY[name]])
    metrics = run(recipe, progress=False)["metrics"]
    assert metrics["samples"] == 3 and {"accuracy/airplane", "accuracy/bed"} <= set(metrics)
    assert 0.0 <= metrics["overall_accuracy"] <= 1.0 and 0.0 <= metrics["mean_class_accuracy"] <= 1.0
    run_dir = tmp_path / "runs" / "tiny"
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == metrics
    train_rows = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    assert "train_loss" in train_rows[0] and len(train_rows) == 2    # one epoch of two steps
    # no validation split: no best.ckpt, the last epoch's weights are exported and tested
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "checkpoints" / "best.ckpt").exists()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = Pipeline("point_cloud_classification", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert reloaded.class_names == list(CLASSES) and reloaded.config["num_points"] == POINTS
    assert reloaded.config["augment_scale"] == recipe.options["augment_scale"]
    test = ModelNetH5(root, "test", num_points=POINTS, normalize=recipe.data.kwargs["normalize"])
    scores = reloaded.evaluate(test, batch_size=3)
    assert {k: scores[k] for k in metrics} == pytest.approx(metrics)
    # a test shape as a file: the reloaded model predicts the class it scores on the dataset item
    (tmp_path / "shapes").mkdir()
    for index in range(len(test)):
        item = test[index]
        np.savetxt(tmp_path / "shapes" / f"s{index}.xyz", item["points"].numpy())
        logits, _ = reloaded.evaluation_step(_Shapes.collate([item]))
        predicted = reloaded(tmp_path / "shapes" / f"s{index}.xyz", sampling="first")
        assert predicted["class_id"] == int(logits.argmax())
        assert predicted["class_name"] == CLASSES[predicted["class_id"]]


@pytest.fixture(scope="module")
def classifier():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Pipeline("point_cloud_classification", backbone="pointnet2_cls_ssg", pretrained=False, device="cpu",
                        backbone_kwargs=dict(num_classes=3, in_channels=3, npoints=(32, 8), nsamples=(8, 8)),
                        num_points=POINTS)


def _clouds(batch=4):
    rng = np.random.default_rng(1)
    xyz = torch.from_numpy(np.stack([_shape(k % 3, rng) for k in range(batch)]))
    return xyz, torch.from_numpy(rng.normal(size=(batch, POINTS, 3)).astype(np.float32))


def test_augmentation_defaults_are_yanx27s_and_each_transform_does_what_it_says(classifier):
    from mtp.pipelines.point_cloud.pipeline import ClassificationOptions

    defaults = ClassificationOptions()
    assert (defaults.augment, defaults.augment_dropout, defaults.augment_scale, defaults.augment_anisotropic,
            defaults.augment_shift, defaults.augment_shuffle) == (True, 0.875, [0.8, 1.25], False, 0.1, False)
    xyz, feats = _clouds()
    still = dict(augment_scale=[1.0, 1.0], augment_shift=0.0)
    with classifier.options_for_call({**still}):   # dropout only: a point is itself or its cloud's first point
        torch.manual_seed(0)
        out, out_feats = classifier.augment_shapes(xyz, feats)
    kept = (out == xyz).all(-1)
    first = (out == xyz[:, :1]).all(-1)
    assert (kept | first).all() and not kept.all()
    assert torch.equal(out_feats[~kept], feats[:, :1].expand_as(feats)[~kept])
    assert torch.equal(out_feats[kept], feats[kept])
    with classifier.options_for_call({"augment_dropout": 0.0, "augment_shift": 0.0}):   # one scale per cloud
        out, out_feats = classifier.augment_shapes(xyz, feats)
    ratio = out / xyz
    assert torch.allclose(ratio, ratio[:, :1, :1].expand_as(ratio), rtol=1e-5)
    assert ((ratio >= 0.8 - 1e-6) & (ratio <= 1.25 + 1e-6)).all() and torch.equal(out_feats, feats)
    with classifier.options_for_call({"augment_dropout": 0.0, "augment_shift": 0.0, "augment_anisotropic": True,
                                      "augment_scale": [2 / 3, 1.5]}):   # PointMLP: one scale per axis
        ratio = classifier.augment_shapes(xyz, feats)[0] / xyz
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5)
    assert not torch.allclose(ratio[:, 0, 0], ratio[:, 0, 1]) and ((ratio > 0.66) & (ratio < 1.51)).all()
    with classifier.options_for_call({"augment_dropout": 0.0, "augment_scale": [1.0, 1.0]}):   # one shift per cloud
        shift = classifier.augment_shapes(xyz, feats)[0] - xyz
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-6) and shift.abs().max() <= 0.1 + 1e-6
    with classifier.options_for_call({**still, "augment_dropout": 0.0, "augment_shuffle": True}):
        out, out_feats = classifier.augment_shapes(xyz, feats)
    assert not torch.equal(out, xyz)
    for b in range(len(xyz)):   # the same points with their features, in another order
        order = [int(np.flatnonzero((xyz[b] == p).all(1).numpy())[0]) for p in out[b]]
        assert sorted(order) == list(range(POINTS)) and torch.equal(out_feats[b], feats[b, order])


def test_augmentation_is_seeded_and_applied_to_training_batches_only(classifier):
    from mtp.pipelines.point_cloud.pipeline import _Shapes

    xyz, feats = _clouds()
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)   # the engine reseeds the global RNG from (seed, epoch)
        draws.append(classifier.augment_shapes(xyz, feats)[0])
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])

    items = [{"points": xyz[b], "features": feats[b], "label": b % 3, "id": f"s{b}"} for b in range(len(xyz))]
    batch = _Shapes.collate(items)
    seen = []
    hook = classifier.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        classifier.model.train()
        classifier.training_loss(batch)
        with classifier.options_for_call({"augment": False}):
            classifier.training_loss(batch)
        classifier.model.eval()
        with torch.no_grad():
            classifier.validation_metrics(batch)
            classifier.evaluation_step(batch)
            classifier.evaluate(items, batch_size=4)
    finally:
        hook.remove()
    assert len(seen) == 5 and not torch.equal(seen[0], xyz)
    assert all(torch.equal(points, xyz) for points in seen[1:])
