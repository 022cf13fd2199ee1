"""ScanNet v2 in Pointcept's preprocessed layout (both the PTv2 / ConDaFormer <scene>.pth dicts and current
Pointcept's <scene>/*.npy folders, written small in a tmp folder), ScanNet's 9-channel voxel dict, a tiny
9-channel ConDaFormer trained and used through the recipe flow, and the two GPU recipes against the official
configs/scannet*/condaformer.py of LHDuan/ConDaFormer."""
import json
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from mtp.datasets.point_cloud import PointCloud
from mtp.datasets.point_cloud.layouts import (SCANNET20_CLASSES, SCANNET200_CLASSES, PointCloudLayoutError,
                                              ScanNet)
from mtp.pipeline import InputError, Pipeline
from mtp.pipelines.point_cloud.pipeline import VoxelCrops, center_shift, voxel_dict

pytestmark = pytest.mark.usefixtures("one_thread")

# a two-stage ConDaFormer (heads 3 and 6) on 9 channels; voxels of 0.1 m keep the scenes at ~1,000 voxels
TINY = dict(in_channels=9, out_channels=20, voxel_size=0.1, window_size=4, quant_size=0.25, base_channels=16,
            head_dim=16, drop_path_rate=0.3, channels=[48, 96, 48, 32], layers=[1, 1, 0, 0])
# 20-class / 200-class labels of the tiny scenes' parts: wall, floor, table (and unannotated clutter)
PARTS = {"wall": (0, 0), "floor": (1, 2), "table": (6, 3), "clutter": (None, None)}


def _scene(rng, n=900):
    """A 2 m room: coord, color (0-255), normal, 20- and 200-class labels (None: unannotated), instance."""
    k = n // 4
    u = rng.uniform(0, 2, (k, 2))
    parts = {"floor": (np.c_[u, rng.normal(0, 0.005, k)], (0, 0, 1), (90, 90, 90)),
             "wall": (np.c_[rng.normal(0, 0.005, k), u[:, 0], u[:, 1] * 1.2], (1, 0, 0), (200, 200, 180)),
             "table": (np.c_[0.6 + u * 0.4, 0.7 + rng.normal(0, 0.005, k)], (0, 0, 1), (140, 80, 30)),
             "clutter": (rng.uniform(0.2, 1.8, (k, 3)), (0, 1, 0), (30, 120, 200))}
    rows = {key: [] for key in ("coord", "color", "normal", "l20", "l200", "instance")}
    for group, (name, (xyz, normal, colour)) in enumerate(parts.items()):
        rows["coord"].append(xyz)
        rows["color"].append(np.clip(np.tile(colour, (k, 1)) + rng.integers(-8, 8, (k, 3)), 0, 255))
        rows["normal"].append(np.tile(normal, (k, 1)))
        rows["l20"].append(np.full(k, -1 if PARTS[name][0] is None else PARTS[name][0]))
        rows["l200"].append(np.full(k, -1 if PARTS[name][1] is None else PARTS[name][1]))
        rows["instance"].append(np.full(k, group))
    return {key: np.concatenate(value) for key, value in rows.items()}


def _write_pth(path, scene, labels=True):
    """The PTv2 / ConDaFormer preprocessing: float64 colours, labels [N, 1] with 255 for "no class"."""
    data = {"coord": scene["coord"].astype(np.float32), "color": scene["color"].astype(np.float64),
            "normal": scene["normal"], "scene_id": path.stem}
    if labels:
        data.update({key: np.where(scene[src] < 0, 255, scene[src])[:, None].astype(np.int64)
                     for key, src in (("semantic_gt20", "l20"), ("semantic_gt200", "l200"),
                                      ("instance_gt", "instance"))})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)


def _write_npy(folder, scene, labels=True):
    """Current Pointcept's preprocessing: one .npy per key, uint8 colours, labels [N] with -1."""
    arrays = {"coord": scene["coord"].astype(np.float32), "color": scene["color"].astype(np.uint8),
              "normal": scene["normal"].astype(np.float32)}
    if labels:
        arrays.update(segment20=scene["l20"], segment200=scene["l200"], instance=scene["instance"])
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in arrays.items():
        np.save(folder / f"{key}.npy", value)


def _scannet(root, pth=True):
    """train/ (2 scenes), val/ (1), test/ (1, unlabelled), in one of the two layouts."""
    rng = np.random.default_rng(0)
    for split, names in (("train", ["scene0000_00", "scene0001_00"]), ("val", ["scene0011_00"]),
                         ("test", ["scene0707_00"])):
        for name in names:
            scene = _scene(rng)
            if pth:
                _write_pth(root / split / f"{name}.pth", scene, labels=split != "test")
            else:
                _write_npy(root / split / name, scene, labels=split != "test")
    return root


# ---- the layout ------------------------------------------------------------------------------------------------

def test_both_layouts_read_the_same_scenes(tmp_path):
    """The same scenes as <scene>.pth and <scene>/*.npy: points, features colour / 255 + normals, labels of
    either set with "no class" (255 or -1 as stored) as -1, instance ids, scene names; test/ has no labels."""
    old, new = _scannet(tmp_path / "pth"), _scannet(tmp_path / "npy", pth=False)
    scene = _scene(np.random.default_rng(0))
    for num_classes, key in ((20, "l20"), (200, "l200")):
        a, b = ScanNet(old, "train", num_classes)[0], ScanNet(new, "train", num_classes)[0]
        assert a["id"] == b["id"] == "scene0000_00"
        for name in ("points", "features", "labels", "instance"):
            assert torch.equal(a[name], b[name]), name
        assert a["points"].dtype == torch.float32 and a["features"].shape == (900, 6)
        assert torch.allclose(a["features"][:, :3], torch.from_numpy(scene["color"] / 255.0).float())
        assert torch.equal(a["features"][:, 3:], torch.from_numpy(scene["normal"]).float())
        assert a["labels"].tolist() == scene[key].tolist() and (a["labels"] == -1).sum() == 225
    val = ScanNet(new, "val", normals=False)
    assert len(val) == 1 and val[0]["features"].shape == (900, 3) and val.classes == list(SCANNET20_CLASSES)
    test = ScanNet(old, "test", 200)[0]
    assert (test["labels"] == -1).all() and "instance" not in test and len(SCANNET200_CLASSES) == 200


def test_registered_builders(tmp_path):
    from mtp.registry import DATASETS

    root = _scannet(tmp_path / "scannet", pth=False)
    for name, classes in (("scannet", 20), ("scannet200", 200)):
        entry = DATASETS.get(name)
        data = entry.load()(root, split="val", **entry.kwargs)
        assert isinstance(data, ScanNet) and data.num_classes == classes and len(data) == 1


def test_errors_name_the_file_and_what_was_expected(tmp_path):
    root = _scannet(tmp_path / "scannet")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(PointCloudLayoutError, match=r"empty/train: empty split folder"):
        ScanNet(tmp_path / "empty", "train")
    with pytest.raises(FileNotFoundError, match="no folder .*empty/val"):
        ScanNet(tmp_path / "empty", "val")
    with pytest.raises(ValueError, match="num_classes must be 20 or 200"):
        ScanNet(root, "train", num_classes=13)
    scene = _scene(np.random.default_rng(1))

    def one(name, layout="pth", **changes):
        """A train/ folder of one scene whose arrays are changed."""
        folder = tmp_path / name / "train"
        broken = {**scene, **changes}
        if layout == "pth":
            _write_pth(folder / "scene0100_00.pth", broken)
        else:
            _write_npy(folder / "scene0100_00", broken)
        return tmp_path / name

    with pytest.raises(PointCloudLayoutError, match=r"normal: shape \(899, 3\), expected \[900, 3\]"):
        ScanNet(one("rows", normal=scene["normal"][:-1]), "train")[0]
    with pytest.raises(PointCloudLayoutError, match=r"segment20.npy: point 0 has label 20; expected 0-19"):
        ScanNet(one("range", "npy", l20=scene["l20"] * 0 + 20), "train")[0]
    with pytest.raises(PointCloudLayoutError, match=r"scene0100_00.pth: coord: shape \(900, 2\)"):
        ScanNet(one("coord", coord=scene["coord"][:, :2]), "train")[0]
    colour = scene["color"].copy()
    colour[5] = 300
    with pytest.raises(PointCloudLayoutError, match=r"scene0100_00.pth: color: values in \[\d+, 300\], expected "
                                                    r"0-255"):
        ScanNet(one("colour", color=colour), "train")[0]
    (root / "train" / "scene0000_00").mkdir()        # a folder beside the .pth of the same scene
    for name in ("coord", "color", "normal", "segment20"):
        np.save(root / "train" / "scene0000_00" / f"{name}.npy", np.zeros(1))
    with pytest.raises(PointCloudLayoutError, match="scene scene0000_00 is there both as"):
        ScanNet(root, "train")
    _write_npy(tmp_path / "nolabels" / "val" / "scene0011_00", scene, labels=False)
    with pytest.raises(PointCloudLayoutError, match=r"scene0011_00: no segment20.npy \(a scene folder"):
        ScanNet(tmp_path / "nolabels", "val")
    path = tmp_path / "keys" / "train" / "scene0100_00.pth"
    path.parent.mkdir(parents=True)
    torch.save({"coord": scene["coord"], "color": scene["color"]}, path)
    with pytest.raises(PointCloudLayoutError, match=r"scene0100_00.pth: no normal, semantic_gt20 \(found coord, "
                                                    r"color; expected coord, color, normal, semantic_gt20\)"):
        ScanNet(tmp_path / "keys", "train")[0]


def test_a_scene_file_with_other_objects_is_refused_unread(tmp_path):
    """A .pth is read with the weights-only unpickler: an object other than arrays and containers is an error."""
    path = tmp_path / "bad" / "train" / "scene0000_00.pth"
    path.parent.mkdir(parents=True)
    torch.save({"coord": np.zeros((2, 3)), "payload": Fraction(1, 3)}, path)
    with pytest.raises(PointCloudLayoutError, match="scene0000_00.pth: not a readable scene file"):
        ScanNet(tmp_path / "bad", "train")[0]


# ---- the 9-channel voxel dict -----------------------------------------------------------------------------------

def test_voxel_dict_with_normals_is_scannets_val_input():
    """CenterShift(apply_z=False) on coord, feat = coord + normal + (c / 127.5 - 1), as the official collects it."""
    coord = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 5.0], [2.0, 4.0, 4.0]])
    assert torch.equal(center_shift(coord), torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 2.0], [0.0, 0.0, 1.0]]))
    colour = torch.tensor([[0.0, 127.5, 255.0]] * 3) / 255
    normal = torch.nn.functional.normalize(torch.randn(3, 3), dim=1)
    data = voxel_dict([{"coord": coord, "grid_coord": coord.long(), "rgb": colour, "normal": normal}])
    assert torch.equal(data["coord"], center_shift(coord, apply_z=False))
    assert torch.equal(data["feat"][:, :3], data["coord"]) and torch.equal(data["feat"][:, 3:6], normal)
    assert torch.allclose(data["feat"][:, 6:], torch.tensor([[-1.0, 0.0, 1.0]] * 3))
    assert voxel_dict([{"coord": coord, "grid_coord": coord.long(), "rgb": colour}])["feat"].shape == (3, 6)


def test_voxel_crops_carry_rotated_normals(tmp_path):
    crops = VoxelCrops(ScanNet(_scannet(tmp_path / "scannet"), "train"), 0.1, 300, crops_per_scene=2, seed=1,
                       normals=True)
    batch = VoxelCrops.collate([crops[0], crops[3]])
    assert batch["feat"].shape == (600, 9) and batch["offset"].tolist() == [300, 600]
    assert torch.allclose(batch["feat"][:, 3:6].norm(dim=1), torch.ones(600))
    assert ((batch["feat"][:, 6:] >= -1) & (batch["feat"][:, 6:] <= 1)).all()
    floor = batch["labels"] == 1                      # floor normals stay (0, 0, 1) under rotations about z
    assert floor.any() and torch.allclose(batch["feat"][floor, 3:6], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    wall = batch["labels"] == 0                       # wall normals turn with the points
    assert not torch.allclose(batch["feat"][wall][:5, 3:6], torch.tensor([1.0, 0.0, 0.0]))
    whole = VoxelCrops(crops.scenes, 0.1, None, crops_per_scene=1, augment=False, normals=True)
    assert len(whole) == 2 and len(whole[0]["coord"]) > 300               # validation: no crop


# ---- the recipe flow --------------------------------------------------------------------------------------------

def test_recipe_trains_a_tiny_9_channel_condaformer_that_labels_every_point(tmp_path, monkeypatch):
    from mtp.config import load_recipe
    from mtp.engine import run

    root = _scannet(tmp_path / "scannet", pth=False)
    monkeypatch.chdir(tmp_path)
    kwargs = [f"backbone.kwargs.{k}={json.dumps(v)}" for k, v in TINY.items()]
    recipe = load_recipe("condaformer_scannet", [
        f"data.root={root}", "train.epochs=2", "train.batch_size=1", "train.threads=1", "train.num_workers=0",
        "train.precision=32-true", "options.max_points=400", "options.crops_per_scene=1", "output.name=cdf_scannet",
        *kwargs])
    result = run(recipe, progress=False)
    metrics = result["metrics"]
    assert result["split"] == "val" and metrics["samples"] == 1 and metrics["points"] == 675   # 225 unannotated
    assert 0.0 <= metrics["miou"] <= 1.0
    run_dir = tmp_path / "runs" / "cdf_scannet"
    logged = np.genfromtxt(run_dir / "logs" / "metrics.csv", delimiter=",", names=True)
    train_rows = logged[np.isfinite(logged["train_loss"])]
    assert train_rows["step"].tolist() == [1, 3]                            # 2 steps an epoch
    assert np.isfinite(logged["val_miou"]).sum() == 2                       # val/ after every epoch
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                       # trained: no untrained warning
        pipe = Pipeline("point_cloud_segmentation", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.voxel_input and pipe.in_channels == 9 and pipe.class_names[0] == "wall"
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 2, (500, 3)).astype(np.float32)
    points[::7] = np.nan
    normals = np.tile(np.float32([0, 0, 1]), (500, 1))
    cloud = PointCloud(points, {"colors": np.full((500, 3), 120, np.uint8),
                                "nx": normals[:, 0], "ny": normals[:, 1], "nz": normals[:, 2]})
    pred = pipe(cloud)["cloud"].fields["pred"]
    invalid = ~np.isfinite(points).all(1)
    assert len(pred) == 500 and (pred[invalid] == -1).all() and ((pred[~invalid] >= 0) & (pred[~invalid] < 20)).all()
    with pytest.raises(InputError, match="the model takes normals"):
        pipe.segment(points, None)


def test_condaformer_scannet_recipes_resolve_to_the_official_training():
    """LHDuan/ConDaFormer configs/scannet/condaformer.py and configs/scannet200/condaformer.py (epoch 900 /
    eval_epoch 100 = 100 epochs of 9 loops)."""
    from mtp.config import load_recipe
    from mtp.pipelines.point_cloud.pipeline import PointCloudSegmentationPipeline
    from mtp.registry import BACKBONES

    for name, classes, window, names in (("condaformer_scannet", 20, 10, SCANNET20_CLASSES),
                                         ("condaformer_scannet200", 200, 8, SCANNET200_CLASSES)):
        recipe = load_recipe(name)
        backbone = BACKBONES.get(recipe.backbone.name)
        assert backbone.kwargs == dict(in_channels=9, out_channels=classes, voxel_size=0.02, window_size=window,
                                       quant_size=0.25, base_channels=48, head_dim=16, drop_path_rate=0.3,
                                       channels=(96, 192, 384, 384, 384, 192, 96, 48), layers=(2, 2, 6, 2, 0, 0, 0, 0))
        assert backbone.weights_key == "state_dict" and recipe.backbone.kwargs == {}
        train = recipe.train
        assert (train.optimizer, train.lr, train.weight_decay, train.batch_size) == ("adamw", 0.006, 0.02, 12)
        assert (train.epochs, recipe.options["crops_per_scene"]) == (100, 9)
        assert (train.scheduler, train.gamma, train.scheduler_interval) == ("multistep", 0.1, "epoch")
        assert [m / train.epochs for m in train.milestones] == [0.6, 0.8]
        assert (train.precision, train.seed, train.num_workers) == ("16-mixed", 3407, 16)
        assert recipe.options["max_points"] == 100000                        # SphereCrop point_max
        assert recipe.data.name == ("scannet" if classes == 20 else "scannet200") and recipe.data.root == "scannet"
        assert recipe.eval.split == "val" and recipe.options["ignore_index"] == -1
        assert tuple(recipe.options["class_names"]) == names
        assert PointCloudSegmentationPipeline.validate_options(recipe.options)["max_points"] == 100000
