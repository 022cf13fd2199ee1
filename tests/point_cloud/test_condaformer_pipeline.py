"""ConDaFormer through the point_cloud_segmentation pipeline: the pipeline's voxelisation against the official
'val' Voxelize records of the fixture (../shared/fixtures/condaformer), the voxel-dict adapter against the official
output, training and prediction through the recipe flow on a small S3DIS layout, the official checkpoint layout
through Pipeline(weights=...), and the GPU recipe against the official configuration."""
import json
import warnings

import numpy as np
import pytest
import torch

from mtp.datasets.point_cloud import PointCloud
from mtp.pipeline import Pipeline
from mtp.pipelines.point_cloud.pipeline import VoxelCrops, voxel_dict, voxelize

pytestmark = pytest.mark.usefixtures("one_thread")

# the fixture's tiny ConDaFormer-small; also the model trained on the small S3DIS layout
TINY = dict(in_channels=6, out_channels=13, voxel_size=0.1, window_size=4, quant_size=0.25, base_channels=16,
            head_dim=16, drop_path_rate=0.3, channels=[48, 96, 96, 64, 48, 32], layers=[2, 2, 1, 0, 0, 0])


@pytest.fixture(scope="module")
def folder(fixture_folder):
    return fixture_folder("condaformer")


@pytest.fixture(scope="module")
def io(folder):
    from safetensors.torch import load_file
    return load_file(folder / "condaformer_tiny_io.safetensors")


@pytest.fixture(scope="module")
def side(folder):
    return json.loads((folder / "condaformer_tiny.json").read_text())


@pytest.fixture(scope="module")
def pipe(folder, side):
    """The pipeline with the fixture's tiny model, loaded from the official checkpoint layout."""
    assert side["constructor_kwargs"] == TINY
    return Pipeline("point_cloud_segmentation", backbone="condaformer_s3dis", backbone_kwargs=TINY, device="cpu",
                    weights=str(folder / "condaformer_tiny_official_format.pth"))


def raw_clouds(io):
    """Per fixture cloud: raw xyz, colours in [0, 1], and its slice of the fixture's voxels."""
    ends, voxel_ends = io["raw_offset"].tolist(), io["offset"].tolist()
    starts, voxel_starts = [0] + ends[:-1], [0] + voxel_ends[:-1]
    return [(io["raw_coord"][a:b], io["raw_color"][a:b] / 255, slice(a, b), slice(c, d))
            for a, b, c, d in zip(starts, ends, voxel_starts, voxel_ends)]


def to_fixture_order(grid_coord, fixture_coord):
    """perm [V]: the fixture voxel (FNV-hash order) of each of our voxels ((x, y, z) order), by voxel index."""
    def key(g):
        return (g[:, 0] * 2**20 + g[:, 1]) * 2**20 + g[:, 2]
    ours, theirs = key(grid_coord), key(fixture_coord.long())
    assert torch.equal(ours.sort().values, theirs.sort().values)        # the same set of voxels
    perm = torch.empty_like(ours)
    perm[ours.argsort()] = theirs.argsort()
    return perm


def test_voxelize_gives_the_official_val_voxels_and_inverse(io):
    """Same voxels, discrete coords and point-to-voxel map as Voxelize(fnv, 'val') for all 5,200 raw points; the
    kept point differs only in voxels of several points (the fixture's 2,349 of 3,120 agree: 'val' keeps the
    first point of numpy's unstable hash sort, "first" the first in input order)."""
    agree = 0
    for xyz, _, raw, vox in raw_clouds(io):
        sample = voxelize(xyz, 0.1)
        perm = to_fixture_order(sample.grid_coord, io["discrete_coord"][vox])
        assert torch.equal(io["discrete_coord"][vox][perm].long(), sample.grid_coord)
        assert torch.equal(perm[sample.inverse], io["inverse"][raw])       # every raw point, its voxel
        official = io["voxel_representative_index"][vox][perm]
        single = sample.counts == 1
        assert torch.equal(official[single], sample.index[single])
        assert torch.equal(sample.index[sample.inverse][sample.index], sample.index)
        agree += int((official == sample.index).sum())
    assert agree == 2349


def test_adapter_with_the_official_representatives_reproduces_the_official_output(io, side, pipe):
    """Our voxels with Voxelize's kept points: the data dict equals the fixture's (reordered) bit for bit, and
    the model's logits for every raw point match the official output within the fixture's atol."""
    clouds, perms = [], []
    for xyz, rgb, _, vox in raw_clouds(io):
        sample = voxelize(xyz, 0.1)
        perm = to_fixture_order(sample.grid_coord, io["discrete_coord"][vox])
        kept = io["voxel_representative_index"][vox][perm]
        clouds.append({"coord": xyz[kept], "grid_coord": sample.grid_coord, "rgb": rgb[kept],
                       "inverse": sample.inverse})
        perms.append(perm + vox.start)
    data = voxel_dict(clouds)
    order = torch.cat(perms)
    for key in ("coord", "feat"):
        assert torch.equal(data[key], io[key][order])
    assert torch.equal(data["offset"], io["offset"]) and torch.equal(data["length"], io["length"])
    with torch.no_grad():
        out = pipe.model(data)
    torch.testing.assert_close(out, io["output"], rtol=0, atol=side["suggested_atol"])


def test_pipeline_labels_every_raw_point_and_nan_points_get_the_invalid_label(io, pipe):
    """segment() on the fixture's first cloud with NaN rows inserted: each valid point gets its voxel's logits
    (the adapter's own voxelisation, one forward on the whole cloud), NaN points -1."""
    xyz, rgb, _, _ = raw_clouds(io)[0]
    points = np.insert(xyz.numpy(), [0, 100, 2999], np.nan, axis=0)
    colours = np.insert(rgb.numpy(), [0, 100, 2999], 0.0, axis=0)
    out = pipe.segment(points, colours)
    valid = np.isfinite(points).all(1)
    assert out["sampled_points"] == 1805 and out["fragments"] == 1 and out["valid_points"] == 3000
    assert (out["pred"][~valid] == -1).all() and (out["pred"][valid] >= 0).all()
    sample = voxelize(xyz, 0.1)
    with torch.no_grad():
        expected = pipe.model(voxel_dict([{"coord": xyz[sample.index], "grid_coord": sample.grid_coord,
                                           "rgb": rgb[sample.index], "inverse": sample.inverse}]))
    torch.testing.assert_close(out["logits"], expected)
    assert np.array_equal(out["pred"][valid], expected.argmax(1).numpy())
    with pipe.options_for_call({"votes": 2}):                               # re-voxelised z rotations
        voted = pipe.segment(points, colours)
    assert np.array_equal(voted["pred_single"], out["pred"]) and (voted["pred"][~valid] == -1).all()
    assert voted["votes"] == 2 and not torch.equal(voted["logits"], out["logits"])


def test_official_checkpoint_loads_strictly_through_the_weights_path(folder, pipe):
    """{'state_dict': {'module.' + name: ...}} via Pipeline(weights=...): the prefix dropped, every tensor loaded;
    a model of another shape is refused with the report."""
    from safetensors.torch import load_file

    from mtp.weights import WeightsError
    reference = load_file(folder / "condaformer_tiny_state_dict.safetensors")
    state = pipe.model.state_dict()
    assert set(state) == set(reference) and all(torch.equal(state[k], v) for k, v in reference.items())
    assert pipe.num_classes == 13 and pipe.in_channels == 6
    with pytest.raises(WeightsError, match="does not fit"):
        Pipeline("point_cloud_segmentation", backbone="condaformer_s3dis", device="cpu",
                 backbone_kwargs={**TINY, "base_channels": 32},
                 weights=str(folder / "condaformer_tiny_official_format.pth"))


def test_a_training_step_runs_under_autocast(io, pipe):
    """The recipe trains with AMP (16-mixed): forward and backward under float16 autocast, finite gradients."""
    import copy
    model = copy.deepcopy(pipe.model).train()
    data = {k: io[k].clone() for k in ("coord", "discrete_coord", "feat", "offset")}
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(data)
    labels = torch.randint(13, (len(logits),), generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(logits.float(), labels).backward()
    assert logits.dtype == torch.float16 and all(torch.isfinite(p.grad).all() for p in model.parameters())


# ---- training through the recipe flow -----------------------------------------------------------------------

def _room(rng, n=900):
    """A 2 m room: floor, a wall and a table top, rows x y z r g b per annotation file."""
    u = rng.uniform(0, 2, (n // 3, 2))
    floor = np.c_[u, rng.normal(0, 0.005, n // 3)]
    wall = np.c_[rng.normal(0, 0.005, n // 3), u[:, 0], u[:, 1] * 1.2]
    table = np.c_[0.6 + u * 0.4, 0.7 + rng.normal(0, 0.005, n // 3)]
    colours = {"floor_1": (90, 90, 90), "wall_1": (200, 200, 180), "table_1": (140, 80, 30)}
    return {name: np.c_[xyz, np.tile(colours[name], (len(xyz), 1)) + rng.integers(-8, 8, (len(xyz), 3))]
            for name, xyz in (("floor_1", floor), ("wall_1", wall), ("table_1", table))}


def _s3dis(root):
    rng = np.random.default_rng(0)
    for area in range(1, 7):
        for name, rows in _room(rng).items():
            path = root / f"Area_{area}" / "office_1" / "Annotations" / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(path, rows, fmt="%.4f")
    return root


def test_voxel_crops_follow_the_official_train_transforms(tmp_path):
    from mtp.datasets.point_cloud.layouts import S3DIS
    crops = VoxelCrops(S3DIS(_s3dis(tmp_path / "s3dis"), "train"), 0.1, 64, crops_per_scene=2, seed=1)
    item = crops[3]
    assert len(item["coord"]) == 64 and item["labels"].shape == (64,)
    assert torch.equal(crops[3]["coord"], item["coord"])                    # seeded by (seed, epoch, index)
    crops.set_epoch(1)
    assert not torch.equal(crops[3]["coord"], item["coord"])
    batch = VoxelCrops.collate([crops[0], crops[1]])
    assert batch["offset"].tolist() == [64, 128] and batch["feat"].shape == (128, 6)
    assert torch.equal(batch["feat"][:, :3], batch["coord"]) and (batch["coord"][:64].min(0).values == 0).all()
    assert ((batch["feat"][:, 3:] >= 0) & (batch["feat"][:, 3:] <= 1)).all()


def test_recipe_trains_a_tiny_condaformer_that_labels_every_point(tmp_path, monkeypatch):
    from mtp.config import load_recipe
    from mtp.engine import run

    root = _s3dis(tmp_path / "s3dis")
    monkeypatch.chdir(tmp_path)
    kwargs = [f"backbone.kwargs.{k}={json.dumps(v)}" for k, v in TINY.items()]
    recipe = load_recipe("condaformer_s3dis", [
        f"data.root={root}", "train.epochs=2", "train.batch_size=2", "train.threads=1", "train.num_workers=0",
        "train.precision=32-true", "options.max_points=200", "options.crops_per_scene=1", "output.name=cdf_tiny",
        *kwargs])
    result = run(recipe, progress=False)
    metrics = result["metrics"]
    assert metrics["samples"] == 1 and metrics["points"] == 900 and 0.0 <= metrics["miou"] <= 1.0
    run_dir = tmp_path / "runs" / "cdf_tiny"
    losses = np.genfromtxt(run_dir / "logs" / "metrics.csv", delimiter=",", names=True)
    assert losses["step"].tolist() == [2, 5] and np.isfinite(losses["train_loss"]).all()   # 3 steps an epoch
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                       # trained: no untrained warning
        pipe = Pipeline("point_cloud_segmentation", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.voxel_input and pipe.model.voxel_size == 0.1 and pipe.class_names[0] == "ceiling"
    points = np.random.default_rng(3).uniform(0, 2, (500, 3)).astype(np.float32)
    points[::7] = np.nan
    cloud = PointCloud(points, {"colors": np.full((500, 3), 120, np.uint8)})
    pred = pipe(cloud)["cloud"].fields["pred"]
    invalid = ~np.isfinite(points).all(1)
    assert len(pred) == 500 and (pred[invalid] == -1).all() and ((pred[~invalid] >= 0) & (pred[~invalid] < 13)).all()


def test_condaformer_s3dis_recipe_resolves_to_the_official_training():
    """LHDuan/ConDaFormer configs/s3dis/condaformer.py (epoch 3000 / eval_epoch 100 = 100 epochs of 30 loops)."""
    from mtp.config import load_recipe
    from mtp.registry import BACKBONES

    recipe = load_recipe("condaformer_s3dis")
    backbone = BACKBONES.get(recipe.backbone.name)
    assert backbone.kwargs == dict(in_channels=6, out_channels=13, voxel_size=0.04, window_size=8, quant_size=0.25,
                                   base_channels=48, head_dim=16, drop_path_rate=0.5,
                                   channels=(96, 192, 384, 192, 96, 48), layers=(2, 6, 2, 0, 0, 0))
    assert backbone.weights_key == "state_dict" and recipe.backbone.kwargs == {}
    train = recipe.train
    assert (train.optimizer, train.lr, train.weight_decay, train.batch_size) == ("adamw", 0.006, 0.05, 8)
    assert (train.epochs, recipe.options["crops_per_scene"]) == (100, 30)
    assert (train.scheduler, train.gamma, train.scheduler_interval) == ("multistep", 0.1, "epoch")
    assert [m / train.epochs for m in train.milestones] == [0.6, 0.8]
    assert (train.precision, train.seed) == ("16-mixed", 3407)
    assert recipe.options["max_points"] == 80000                             # SphereCrop point_max
    assert recipe.data.name == "s3dis" and recipe.data.kwargs == {"test_area": 5} and recipe.eval.split == "test"
    assert len(recipe.options["class_names"]) == 13
    from mtp.pipelines.point_cloud.pipeline import PointCloudSegmentationPipeline
    assert PointCloudSegmentationPipeline.validate_options(recipe.options)["max_points"] == 80000
