"""Point-cloud classification and semantic segmentation on the TaskPipeline contract.

Segmentation (`point_cloud_segmentation`): a cloud of any size in (PCD, PLY, OFF, XYZ/TXT, NPY), the same cloud out
with every field it had plus an int32 ``pred`` label per point, and ``<stem>.png``, a rendering coloured by label.

- Invalid points (a NaN or infinite coordinate, e.g. the holes of an organised Kinect cloud) never reach the
  model; their ``pred`` is ``INVALID_LABEL`` (-1). The file keeps every point in its order (an organised cloud
  keeps its pixel grid).
- The valid points are grid-sampled (`grid_size`, ``mtp.kernels.grid_sample`` mode "center": deterministic).
- Fragments: when more than `max_points` sampled points remain, the cloud is cut into kNN sphere crops of
  exactly `max_points` points (the nearest ones to a seed, i.e. a ball of adaptive radius, as Pointcept's
  SphereCrop). Seeds are the farthest-point sample of ceil(`overlap` * V / max_points) sampled points; then,
  while a point is in no crop, the lowest-index uncovered point seeds one more crop, so every point is covered.
  Each crop is one forward on at most `max_points` points (`crop_batch` crops at a time): model memory is
  bounded by max_points whatever the cloud's size. A point's logits are the mean over the crops that hold it.
- Predictions go back to every valid point through the grid-sample inverse map (a point takes its voxel's).
- Model input per crop: xyz minus the crop's centroid; features by the model's in_channels: 0 none, 3 colours
  r g b / 255, 6 colours + xyz / max(xyz) of the cloud (yanx27's S3DIS channels); a cloud without colours gets
  0.5 grey.
- Voxel-dict models (a backbone with ``input_format = "voxel_dict"``, ConDaFormer): the valid points are
  voxelised at the model's ``voxel_size`` as Pointcept's S3DIS val transforms do (`voxelize`, `voxel_dict`:
  Voxelize -> PositiveShift -> colours 0-1 -> feat = coord + colour), the whole cloud runs in one forward (the
  official val protocol: no crops, `grid_size`/`overlap`/`crop_batch` unused) and every valid point takes its
  voxel's logits through the inverse map. Training items are `VoxelCrops`. Votes rotate the cloud about z and
  voxelise it again. A model with in_channels 9 gets ScanNet's transforms instead: CenterShift(apply_z) ->
  Voxelize -> CenterShift(x, y) -> NormalizeColor (c / 127.5 - 1, i.e. 2 * rgb - 1) -> feat = coord + normal +
  colour (`center_shift`, `voxel_dict`), the normals from the cloud's nx ny nz (normal_x ...) fields, or in
  evaluation from the dataset's features 3-5. Validation items are whole scenes, voxelised once each (the
  official val: no loop, no SphereCrop); evaluating a split of such items (eval.split: val) evaluates its scenes.
- Organised-grid models (a backbone with ``input_format = "organised_grid"``, RangeUNet): object instance
  segmentation on the cloud's pixel grid by ``range_instances.segment`` (range-image features with the RANSAC
  table plane, the network at half resolution, grouping on the grid; an unorganised cloud, e.g. mOSD's test43, is
  laid back on the Kinect grid first). Every point gets ``pred`` (0 table / 1 object) and ``instance`` (object id
  0..K-1, -1 on the table and on invalid points), both written to the output file; the PNG colours objects.
  `grid_size`/`max_points`/`overlap`/`crop_batch`/`votes` are unused. Training (`fit_direct`) is
  ``range_instances.train_model`` on the train split's scans, not the Trainer; evaluation scores instances with
  ``metrics.score_mosd_scan``/``summarise_mosd_scans`` (benchmarks/mosd_geometric_baseline.py's figures), per README
  group (``<group>/`` keys) and over the split, and the geometric baseline (``plane_and_clusters``, its
  defaults) on the same scans beside it (``baseline/`` keys).
- Test-time voting (`votes` > 0): the crops run again `votes` times with a seeded random rotation about z (and
  a 0.5 * grid_size Gaussian jitter), logits averaged with the plain pass. The single-pass and voted results are
  always reported separately: ``pred`` (the file, voted when votes > 0), ``pred_single`` in the result dict,
  and in evaluation ``miou`` etc. (single pass) beside ``vote/miou`` etc.

Classification (`point_cloud_classification`): a cloud -> JSON ``{class_id, class_name, probabilities}``
(``<stem>.json``). Preprocessing: invalid points dropped, `num_points` kept by farthest point sampling from
index 0 (`sampling: fps`, default) or the first N (`sampling: first`, the resampled ModelNet files are in FPS
order already); fewer points than num_points are repeated cyclically. Then centred on the centroid and scaled
into the unit sphere (the PointNet++ ModelNet loader's normalisation). Features: normals (nx ny nz, or
normal_x..) when the model takes 3 channels.

Evaluation streams over the whole split: segmentation with one ``ConfusionMatrix`` (never per batch) ->
per-class IoU, mIoU, overall and mean class accuracy; classification -> overall and mean class accuracy.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from mtp.datasets.point_cloud.io import READ_SUFFIXES, WRITE_SUFFIXES
from mtp.datasets.point_cloud.layouts import normalize_unit_sphere
from mtp.files import atomic_path
from mtp.pipeline import InputError, OptionError, TaskPipeline
INVALID_LABEL = -1
log = logging.getLogger("mtp.point_cloud")

MODELNET40_CLASSES = ("airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
                      "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard",
                      "lamp", "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio",
                      "range_hood", "sink", "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase",
                      "wardrobe", "xbox")
MODELNET10_CLASSES = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet")
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
                    [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------- shared helpers
def _load_cloud(source):
    """A path, a PointCloud, or an [N, >=3] array -> PointCloud."""
    from mtp.datasets.point_cloud import PointCloud, PointCloudFileError, read_points

    if isinstance(source, PointCloud):
        return source
    if isinstance(source, (str, Path)):
        try:
            return read_points(source)
        except (PointCloudFileError, FileNotFoundError) as err:
            raise InputError(str(err)) from None
    array = np.asarray(source.detach().cpu() if isinstance(source, torch.Tensor) else source)
    if array.ndim != 2 or array.shape[1] < 3:
        raise InputError(f"expected a point-cloud file, a PointCloud or an [N, >=3] array, got shape {array.shape}")
    return PointCloud(array[:, :3].astype(np.float32))


def _colors(cloud) -> np.ndarray | None:
    colors = cloud.fields.get("colors")
    return None if colors is None else colors.astype(np.float32) / 255.0


def _normals(cloud) -> np.ndarray | None:
    for names in (("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z")):
        if all(n in cloud.fields for n in names):
            return np.stack([cloud.fields[n].astype(np.float32) for n in names], axis=1)
    return None


def _class_names(names, num_classes: int) -> list[str]:
    if names:
        if len(names) != num_classes:
            raise OptionError(f"class_names has {len(names)} names for a {num_classes}-class model")
        return [str(n) for n in names]
    if num_classes == 40:
        return list(MODELNET40_CLASSES)
    if num_classes == 10:
        return list(MODELNET10_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]


class _Items(torch.utils.data.Dataset):
    """Scenes/shapes for evaluation, batched as lists (clouds differ in size)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        return self.base[index]

    @staticmethod
    def collate(batch):
        return batch


class _PointCloudPipeline(TaskPipeline):
    input_suffixes = READ_SUFFIXES
    max_batch_items = 1

    @property
    def num_classes(self) -> int:
        # Pointcept-style backbones (ConDaFormer) call it out_channels
        return int(self.model_kwargs.get("num_classes") or self.model_kwargs.get("out_channels")
                   or getattr(self.model, "num_classes"))

    @property
    def in_channels(self) -> int:
        return int(self.model_kwargs.get("in_channels", getattr(self.model, "in_channels", 0)) or 0)

    @property
    def class_names(self) -> list[str]:
        return _class_names(self.config["class_names"], self.num_classes)

    def build_model(self, backbone, weights, **kwargs):
        from mtp.weights import load_into, load_state_dict_file

        entry = self.backbone_entry(backbone)
        self.backbone_name = entry.name
        built = {**entry.kwargs, **kwargs}
        model = entry.build(**built)
        self.model_kwargs = built
        if weights:
            # a model exported by `mtp run` holds the bare state dict; yanx27's checkpoints nest it (weights_key)
            key = None if self._read_export(weights) else entry.weights_key
            load_into(model, load_state_dict_file(weights, key=key), source=str(weights))
        return model

    def evaluation_dataset(self, data, split: str = "test"):
        if isinstance(data, (str, Path)):
            data = self._named_dataset(data, split)
        return data if isinstance(data, _Items) else _Items(data)

    def _named_dataset(self, data, split):
        from mtp.registry import DATASETS

        if str(data) in DATASETS.names():
            entry = DATASETS.get(str(data))
            return entry.load()(None, split=split, **entry.kwargs)
        return self.default_dataset(data, split)

    def default_dataset(self, root, split):
        raise InputError(f"{root}: give a registered dataset name or a dataset object")

    def _device(self):
        return next(self.model.parameters()).device


# ---------------------------------------------------------------------------------------------- segmentation
@dataclass
class SegmentationOptions:
    grid_size: float = 0.01          # voxel size (the clouds' unit, metres for Kinect / S3DIS) before the model
    max_points: int = 4096           # points per model forward (a crop); training crops have this size too
    overlap: float = 2.0             # seeds = ceil(overlap * sampled points / max_points) before coverage top-up
    crop_batch: int = 1              # crops per forward at inference
    votes: int = 0                   # extra passes with random z rotation + jitter (seeded), averaged
    seed: int = 0                    # the votes' and training crops' random draws
    format: Optional[str] = None     # output format: pcd | ply | npy; None: the input's (.ply for off/xyz/txt)
    render: bool = True              # also write <stem>.png
    class_names: Optional[list] = None
    ignore_index: int = -1           # reference label left out of loss and metrics
    crops_per_scene: int = 4         # training: random crops drawn from each scene per epoch
    augment: bool = True             # training: random rotation about z, scale 0.9-1.1, jitter

    def validate(self):
        if not self.grid_size > 0:
            raise ValueError(f"grid_size={self.grid_size}: expected > 0")
        if self.max_points < 16:
            raise ValueError(f"max_points={self.max_points}: expected >= 16")
        if self.overlap < 1:
            raise ValueError(f"overlap={self.overlap}: expected >= 1")
        if self.crop_batch < 1 or self.votes < 0 or self.crops_per_scene < 1:
            raise ValueError("crop_batch and crops_per_scene must be >= 1, votes >= 0")
        if self.format is not None and self.format.lower().lstrip(".") not in ("pcd", "ply", "npy"):
            raise ValueError(f"format={self.format!r}: expected pcd, ply or npy (or None: the input's)")


def model_features(xyz: np.ndarray, rgb: np.ndarray | None, in_channels: int, extent: np.ndarray | None = None):
    """Per-point model features by the model's in_channels (module docstring); float32 [N, C] or None."""
    if in_channels == 0:
        return None
    rgb = np.full((len(xyz), 3), 0.5, dtype=np.float32) if rgb is None else rgb.astype(np.float32)
    if in_channels == 3:
        return rgb
    if in_channels == 6:
        extent = np.abs(xyz).max(0) if extent is None else extent
        return np.concatenate([rgb, xyz / np.maximum(extent, 1e-6)], 1).astype(np.float32)
    raise OptionError(f"a segmentation model with in_channels={in_channels}: expected 0, 3 (rgb) or 6 (rgb + "
                      f"normalised xyz)")


def sphere_crops(xyz: torch.Tensor, max_points: int, overlap: float = 2.0) -> list[torch.Tensor]:
    """Index sets (long [<= max_points]) of kNN sphere crops covering every point of xyz [V, 3]."""
    from mtp.kernels import farthest_point_sample, knn

    n = xyz.shape[0]
    if n <= max_points:
        return [torch.arange(n)]
    seeds = farthest_point_sample(xyz[None], min(n, math.ceil(overlap * n / max_points)))[0]
    crops = list(knn(xyz[seeds][None], xyz[None], max_points)[0][0])
    covered = torch.zeros(n, dtype=torch.bool)
    for crop in crops:
        covered[crop] = True
    while not bool(covered.all()):   # top up: the lowest-index uncovered point seeds one more crop
        seed = int(torch.nonzero(~covered)[0])
        crop = knn(xyz[seed][None, None], xyz[None], max_points)[0][0, 0]
        crops.append(crop)
        covered[crop] = True
    return [c.long() for c in crops]


VOXEL_DICT = "voxel_dict"   # a backbone's `input_format` when it takes Pointcept's data dict (ConDaFormer)
ORGANISED_GRID = "organised_grid"   # ... when it segments instances on an organised cloud's pixel grid (RangeUNet)


def voxelize(xyz: torch.Tensor, voxel_size: float, mode: str = "first", generator: torch.Generator | None = None):
    """One cloud xyz [N, 3] (finite) in voxels as Pointcept's Voxelize builds them, by mtp.kernels.grid_sample.

    Returns grid_sample's GridSample: index [V] (the kept point of each voxel), inverse [N] (each point's voxel),
    grid_coord [V, 3] = Voxelize's discrete_coord, counts [V].
    The grid is Voxelize's: floor(xyz / voxel_size) in float64 (numpy's float32 / float64 division), anchored at
    the origin, minus its per-axis min. grid_sample anchors its grid at the cloud's min instead, so it is given
    those integer coordinates with grid size 1: its voxels, grid_coord and inverse are then exactly Voxelize's.
    Differences from Voxelize(hash_type="fnv"):
    - voxel order: ascending (x, y, z), not ascending FNV hash (the model's output per point does not depend on
      the order beyond float rounding; inverse follows the order used);
    - mode "first" stands in for mode 'val': each voxel keeps its first point in input order, where 'val' keeps
      the first in numpy's unstable argsort of the hashes (which point that is, in a voxel of several, depends
      on the numpy build; the representative sets the voxel's coord and colour);
    - mode "random" is mode 'train' (a uniform member per voxel), drawn from a torch generator;
    - no mode 'test' (fragments taking the i-th point of every voxel).
    On the ConDaFormer fixture's two clouds: the same 3,120 voxels, discrete coords and inverse as Voxelize 'val';
    2,349 kept points agree (all 1,761 one-point voxels, and 588 of the 1,359 voxels of several points).
    """
    from mtp.kernels import grid_sample

    return grid_sample(torch.floor(xyz.double() / voxel_size), 1.0, mode=mode, generator=generator)


def center_shift(xyz: torch.Tensor, apply_z: bool = True) -> torch.Tensor:
    """Pointcept's CenterShift: xyz [N, 3] minus its x and y mid-range and, with apply_z, its z minimum."""
    low, high = xyz.min(0).values, xyz.max(0).values
    shift = (low + high) / 2
    shift[2] = low[2] if apply_z else 0.0
    return xyz - shift


def voxel_dict(clouds: list[dict]) -> dict:
    """Pointcept's collated data dict from voxelised clouds, as the S3DIS val transforms and collate_fn build it.

    Each cloud: ``coord`` [V, 3] (its voxels' kept points, metres), ``grid_coord`` [V, 3] (voxelize's),
    ``rgb`` [V, 3] in [0, 1] or None (0.5 grey), optionally ``normal`` [V, 3], ``inverse`` [R] (each raw
    point's voxel) and ``labels`` [V]. Out: coord after PositiveShift (minus its per-cloud min), discrete_coord,
    feat = coord + rgb (float32, in_channels 6), offset (cumulative voxel counts), and when given inverse
    (cloud-local, as collate_fn leaves it) with length (raw points per cloud), labels. A cloud with ``normal``
    gets ScanNet's val transforms instead: coord after CenterShift(apply_z=False), feat = coord + normal +
    NormalizeColor's colour (c / 127.5 - 1 = 2 * rgb - 1), in_channels 9.
    """
    coords, feats = [], []
    for cloud in clouds:
        coord = cloud["coord"].float()
        rgb = cloud.get("rgb")
        rgb = torch.full_like(coord, 0.5) if rgb is None else torch.as_tensor(rgb, dtype=torch.float32)
        if cloud.get("normal") is None:
            coord = coord - coord.min(0).values
            feats.append(torch.cat([coord, rgb], 1))
        else:
            coord = center_shift(coord, apply_z=False)
            normal = torch.as_tensor(cloud["normal"], dtype=torch.float32)
            feats.append(torch.cat([coord, normal, rgb * 2 - 1], 1))
        coords.append(coord)
    out = {"coord": torch.cat(coords), "discrete_coord": torch.cat([c["grid_coord"].long() for c in clouds]),
           "feat": torch.cat(feats), "offset": torch.tensor([len(c) for c in coords]).cumsum(0)}
    if all("inverse" in c for c in clouds):
        out["inverse"] = torch.cat([c["inverse"].long() for c in clouds])
        out["length"] = torch.tensor([len(c["inverse"]) for c in clouds])
    if all("labels" in c for c in clouds):
        out["labels"] = torch.cat([torch.as_tensor(c["labels"]).long() for c in clouds])
    return out


class PointCloudSegmentationPipeline(_PointCloudPipeline):
    task = "point_cloud_segmentation"
    default_backbone = "pointnet2_semseg_ssg"
    Options = SegmentationOptions
    metrics = ("point_segmentation",)
    monitor = ("val_miou", "max")

    @property
    def num_classes(self) -> int:
        # an organised-grid model's logits are table, object and boundary; its classes are table and object
        return 2 if self.grid_input else super().num_classes

    # ------------------------------------------------------------------ core inference
    def segment(self, points: np.ndarray, rgb: np.ndarray | None = None, width: int | None = None,
                height: int | None = None, normals: np.ndarray | None = None) -> dict:
        """points float [N, 3] (NaN allowed), rgb [N, 3] in [0, 1] or None -> {pred [N] (voted when votes > 0),
        pred_single [N], logits [V, C] of the sampled points (voxel-dict models: [N_valid, C] of the valid points),
        fragments, sampled_points, ...}. Organised-grid models also use the cloud's ``width`` and ``height``
        (None or height 1: unorganised) and return ``instance`` [N] instead of logits. Voxel-dict models with
        in_channels 9 also need ``normals`` [N, 3]."""
        from mtp.kernels import grid_sample

        if self.grid_input:
            return self._segment_grid(points, rgb, width, height)
        points = np.asarray(points, dtype=np.float32)
        valid = np.isfinite(points).all(1)
        n = len(points)
        pred = np.full(n, INVALID_LABEL, dtype=np.int32)
        stats = {"points": n, "valid_points": int(valid.sum()), "sampled_points": 0, "fragments": 0,
                 "max_fragment_points": 0, "votes": self.config["votes"]}
        if not valid.any():
            return {"pred": pred, "pred_single": pred.copy(), **stats}
        xyz = torch.from_numpy(points[valid])
        if self.voxel_input:
            return self._segment_voxels(xyz, rgb, valid, pred, stats, normals)
        sample = grid_sample(xyz, self.config["grid_size"], mode="center")
        sampled = xyz[sample.index]
        colours = None if rgb is None else np.asarray(rgb, dtype=np.float32)[valid][sample.index.numpy()]
        crops = sphere_crops(sampled, self.config["max_points"], self.config["overlap"])
        covered = torch.zeros(len(sampled), dtype=torch.bool)
        for crop in crops:
            covered[crop] = True
        stats.update(sampled_points=len(sampled), fragments=len(crops),
                     max_fragment_points=max(len(c) for c in crops), covered=bool(covered.all()))
        extent = sampled.abs().max(0).values.numpy()
        single = self._crop_logits(sampled, colours, crops, extent, rotation=None)
        single_labels = single.argmax(1)[sample.inverse].numpy()
        pred_single = pred.copy()
        pred_single[valid] = single_labels
        total = single.clone()
        generator = torch.Generator().manual_seed(self.config["seed"])
        for _ in range(self.config["votes"]):
            angle = float(torch.rand((), generator=generator)) * 2 * math.pi
            total += self._crop_logits(sampled, colours, crops, extent, rotation=(angle, generator))
        voted = total / (1 + self.config["votes"])
        pred[valid] = voted.argmax(1)[sample.inverse].numpy()
        return {"pred": pred, "pred_single": pred_single, "logits": voted, **stats}

    @property
    def grid_input(self) -> bool:
        """The model segments instances on the organised pixel grid (module docstring)."""
        return getattr(self.model, "input_format", None) == ORGANISED_GRID

    def _segment_grid(self, points, rgb, width, height) -> dict:
        """segment() for organised-grid models: ``range_instances.segment`` -> semantic ``pred`` and ``instance``
        per point (-1 on invalid points)."""
        from mtp.pipelines.point_cloud import range_instances as ri

        semantic, instance = ri.segment(self.model, points, rgb, width, height)
        pred = semantic.astype(np.int32)
        return {"pred": pred, "pred_single": pred.copy(), "instance": instance.astype(np.int32),
                "points": len(pred), "valid_points": int((pred >= 0).sum()), "objects": int(instance.max() + 1)}

    @property
    def voxel_input(self) -> bool:
        """The model takes Pointcept's voxel data dict (module docstring) instead of [B, N, 3] crops."""
        return getattr(self.model, "input_format", None) == VOXEL_DICT

    def _check_voxel_channels(self) -> None:
        if self.in_channels not in (6, 9):
            raise OptionError(f"a voxel-dict model with in_channels={self.in_channels}: this pipeline builds the "
                              f"S3DIS features coord + rgb (6 channels) or ScanNet's coord + normal + rgb (9)")

    def _segment_voxels(self, xyz, rgb, valid, pred, stats, normals=None) -> dict:
        """segment() for voxel-dict models: logits [N_valid, C] of every valid point (not per sampled point)."""
        self._check_voxel_channels()
        colours = None if rgb is None else torch.from_numpy(np.asarray(rgb, dtype=np.float32)[valid])
        normal = None
        if self.in_channels == 9:
            if normals is None:
                raise InputError("the model takes normals (in_channels 9: coord + normal + colour); the cloud has "
                                 "no nx ny nz (normal_x normal_y normal_z) fields")
            normal = torch.from_numpy(np.asarray(normals, dtype=np.float32)[valid])
        single, voxels = self._voxel_logits(xyz, colours, normals=normal)
        pred_single = pred.copy()
        pred_single[valid] = single.argmax(1).numpy()
        total = single.clone()
        generator = torch.Generator().manual_seed(self.config["seed"])
        for _ in range(self.config["votes"]):
            angle = float(torch.rand((), generator=generator)) * 2 * math.pi
            total += self._voxel_logits(xyz, colours, angle, normal)[0]
        voted = total / (1 + self.config["votes"])
        pred[valid] = voted.argmax(1).numpy()
        stats.update(sampled_points=voxels, fragments=1, max_fragment_points=voxels, covered=True)
        return {"pred": pred, "pred_single": pred_single, "logits": voted, **stats}

    def _voxel_logits(self, xyz, colours, angle: float | None = None,
                      normals: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """(logits [N, C] of the points xyz [N, 3], voxel count): voxelised at the model's voxel_size (rotated by
        `angle` about z around the centroid first, a vote), one forward, gathered through the inverse. With
        `normals` (in_channels 9), ScanNet's val transforms (module docstring)."""
        if angle is not None:
            cos, sin = math.cos(angle), math.sin(angle)
            centre = xyz.mean(0)
            rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
            xyz = (xyz - centre) @ rotation.T + centre
            normals = None if normals is None else normals @ rotation.T
        if normals is not None:
            xyz = center_shift(xyz)     # before Voxelize: it sets the grid's origin
        sample = voxelize(xyz, self.model.voxel_size)
        data = voxel_dict([{"coord": xyz[sample.index], "grid_coord": sample.grid_coord,
                            "rgb": None if colours is None else colours[sample.index],
                            "normal": None if normals is None else normals[sample.index], "inverse": sample.inverse}])
        return self.model(self._on_device(data)).float().cpu(), len(sample.index)

    def _on_device(self, data: dict) -> dict:
        device = self._device()
        return {k: v.to(device, self.dtype) if v.is_floating_point() else v.to(device) for k, v in data.items()}

    def _crop_logits(self, sampled, colours, crops, extent, rotation) -> torch.Tensor:
        c = self.num_classes
        total = torch.zeros(len(sampled), c)
        count = torch.zeros(len(sampled), 1)
        step = self.config["crop_batch"]
        device = self._device()
        for start in range(0, len(crops), step):
            group = crops[start:start + step]
            size = max(len(g) for g in group)
            xyz = torch.full((len(group), size, 3), float("nan"))
            feats = None if self.in_channels == 0 else torch.zeros(len(group), size, self.in_channels)
            for i, crop in enumerate(group):
                local = sampled[crop] - sampled[crop].mean(0)
                if rotation is not None:
                    angle, generator = rotation
                    cos, sin = math.cos(angle), math.sin(angle)
                    rot = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
                    local = local @ rot.T + torch.randn(local.shape, generator=generator) * (
                        0.5 * self.config["grid_size"])
                xyz[i, :len(crop)] = local
                f = model_features(sampled[crop].numpy(), None if colours is None else colours[crop.numpy()],
                                   self.in_channels, extent)
                if f is not None:
                    feats[i, :len(crop)] = torch.from_numpy(f)
            lengths = torch.tensor([len(g) for g in group])
            logits = self.model(xyz.to(device, self.dtype), None if feats is None else feats.to(device, self.dtype),
                                lengths=lengths.to(device)).float().cpu()
            for i, crop in enumerate(group):
                total.index_add_(0, crop, logits[i, :len(crop)])
                count[crop] += 1
        return total / count.clamp(min=1)

    # ------------------------------------------------------------------ inference hooks
    def load(self, source):
        cloud = _load_cloud(source)
        if len(cloud) == 0:
            raise InputError(f"{source}: the cloud has no points")
        return {"name": str(source) if isinstance(source, (str, Path)) else "<cloud>", "cloud": cloud}

    def preprocess(self, item) -> dict:
        cloud = item["cloud"]
        if not cloud.valid.any():
            log.warning("%s: no valid (finite) point; every point is labelled %d", item["name"], INVALID_LABEL)
        return {"points": cloud.points, "rgb": _colors(cloud), "width": cloud.width, "height": cloud.height,
                "normals": _normals(cloud)}

    def forward(self, inputs: list[dict]) -> list:
        with torch.inference_mode():
            return [self.segment(one["points"], one["rgb"], one["width"], one["height"], one["normals"])
                    for one in inputs]

    def postprocess(self, output, item, inputs: dict) -> dict:
        from mtp.datasets.point_cloud import PointCloud

        cloud = item["cloud"]
        fields = {**cloud.fields, "pred": output["pred"].astype(np.int32)}
        if "instance" in output:
            fields["instance"] = output["instance"]
        labelled = PointCloud(cloud.points, fields, width=cloud.width, height=cloud.height,
                              viewpoint=cloud.viewpoint, source=cloud.source)
        counts = {name: int((output["pred"] == k).sum()) for k, name in enumerate(self.class_names)}
        counts["invalid"] = int((output["pred"] == INVALID_LABEL).sum())
        return {"name": item["name"], "cloud": labelled, "counts": counts,
                **{k: v for k, v in output.items() if k != "logits"}}

    def output_paths(self, relative: Path) -> list[Path]:
        stem = self.stem(relative)
        fmt = self.config["format"]
        suffix = ("." + fmt.lower().lstrip(".")) if fmt else (relative.suffix.lower() if relative.suffix.lower()
                                                               in WRITE_SUFFIXES else ".ply")
        paths = [relative.with_name(stem + suffix)]
        if self.config["render"]:
            paths.append(relative.with_name(stem + ".png"))
        return paths

    def save(self, result, paths: list[Path], overwrite: bool) -> list[Path]:
        from mtp.datasets.point_cloud import write_points

        written = [write_points(paths[0], result["cloud"], overwrite=overwrite)]
        for path in paths[1:]:
            written.append(self._render(result["cloud"].points, result, path, Path(result["name"]).name, overwrite))
        return written

    def _render(self, points, output: dict, path: Path, title: str, overwrite: bool) -> Path:
        """render_labels by ``pred``, or, with instances, by object: the table 0, object k as k + 1."""
        if "instance" not in output:
            return render_labels(points, output["pred"], path, self.class_names, title=title, overwrite=overwrite)
        labels = np.where(output["pred"] < 0, INVALID_LABEL, output["instance"] + 1)
        names = [self.class_names[0]] + [f"object {k}" for k in range(output["objects"])]
        return render_labels(points, labels, path, names, title=title, overwrite=overwrite)

    # ------------------------------------------------------------------ training and evaluation
    def datasets(self, recipe) -> dict:
        splits = super().datasets(recipe)
        if self.grid_input:      # whole labelled scans: fit_direct and evaluate take them as they are
            return splits
        for split in ("train", "val"):
            if splits.get(split) is not None and self.voxel_input:
                self._check_voxel_channels()
                train = split == "train"     # validation: whole scenes once each (module docstring)
                splits[split] = VoxelCrops(splits[split], self.model.voxel_size,
                                           self.config["max_points"] if train else None,
                                           self.config["crops_per_scene"] if train else 1, self.config["seed"],
                                           augment=self.config["augment"] and train, normals=self.in_channels == 9)
            elif splits.get(split) is not None:
                splits[split] = SegmentationCrops(splits[split], self.config["grid_size"], self.config["max_points"],
                                                  self.config["crops_per_scene"], self.config["seed"],
                                                  augment=self.config["augment"] and split == "train",
                                                  in_channels=self.in_channels)
        return splits

    def _loss_and_logits(self, batch):
        device = self._device()
        if "offset" in batch:  # a VoxelCrops batch: the model's data dict, logits and labels per voxel
            labels = batch["labels"].to(device)
            logits = self.model(self._on_device({k: v for k, v in batch.items() if k != "labels"}))
        else:
            xyz, labels = batch["points"].to(device), batch["labels"].to(device)
            feats = batch["features"].to(device) if self.in_channels else None
            logits = self.model(xyz, feats)
        valid = labels != self.config["ignore_index"]
        if not bool(valid.any()):
            return logits.sum() * 0.0, logits, labels
        loss = torch.nn.functional.cross_entropy(logits[valid], labels[valid])
        return loss, logits, labels

    def training_loss(self, batch):
        return self._loss_and_logits(batch)[0]

    def fit_direct(self, splits: dict, recipe) -> bool:
        """Organised-grid models: ``range_instances.train_model`` (its Adam, cosine decay, crops and augmentation)
        for train.max_steps steps of train.batch_size crops, lr, weight_decay, seed, on ``prepare_item`` of every
        train scan (benchmarks/mosd_instances.py's fit); other models train with the Trainer (False)."""
        if not self.grid_input:
            return False
        from mtp.pipelines.point_cloud import range_instances as ri

        train = recipe.train
        if train.optimizer != "adam" or train.scheduler != "cosine" or train.max_steps < 1:
            raise OptionError(f"an organised-grid model trains with range_instances.train_model: Adam with cosine "
                              f"decay over train.max_steps >= 1 steps; got optimizer={train.optimizer!r}, "
                              f"scheduler={train.scheduler!r}, max_steps={train.max_steps}")
        if self._device().type != "cpu":
            raise OptionError("an organised-grid model trains on the CPU: set train.accelerator: cpu")
        if recipe.backbone.weights is None:
            # the benchmark's initialisation (seeded just before the model is built), whatever was drawn before
            torch.manual_seed(train.seed)
            self.model.load_state_dict(self.backbone_entry(self.backbone_name).build(**self.model_kwargs)
                                       .state_dict())
        started = time.perf_counter()
        scans = [ri.prepare_item(splits["train"][i]) for i in range(len(splits["train"]))]
        log.info("prepared %d scans in %.1f s", len(scans), time.perf_counter() - started)
        ri.train_model(self.model, scans, steps=train.max_steps, batch_size=train.batch_size, lr=train.lr,
                       weight_decay=train.weight_decay, seed=train.seed, log_every=50, log=log.info)
        return True

    def validation_metrics(self, batch) -> dict:
        from mtp.pipelines.point_cloud.metrics import ConfusionMatrix

        loss, logits, labels = self._loss_and_logits(batch)
        matrix = ConfusionMatrix(self.num_classes, ignore_index=self.config["ignore_index"])
        matrix.update(logits.argmax(-1).cpu(), labels.cpu())
        miou = matrix.miou
        return {"val_loss": loss, "val_miou": torch.tensor(0.0 if math.isnan(miou) else miou)}

    def evaluation_dataset(self, data, split: str = "test"):
        # a split the engine wrapped for training or validation is evaluated on its whole scenes
        if isinstance(data, (SegmentationCrops, VoxelCrops)):
            data = data.scenes
        return super().evaluation_dataset(data, split)

    def default_dataset(self, root, split):
        from mtp.datasets.point_cloud.layouts import MOSD

        return MOSD(root, split)

    def evaluation_step(self, batch) -> tuple:
        """Scenes -> ({single: [N] labels per scene, voted: ... or None}, [N] reference labels per scene); every
        point of a scene is predicted by the inference path (grid sample, crops, inverse map)."""
        singles, voted, references = [], [], []
        for item in batch:
            points = item["points"].numpy() if isinstance(item["points"], torch.Tensor) else np.asarray(item["points"])
            feats = item.get("features")
            rgb = normals = None
            if feats is not None and feats.shape[1] >= 3:
                rgb = np.asarray(feats[:, :3], dtype=np.float32)
            if feats is not None and feats.shape[1] >= 6:       # ScanNet's colour + normal
                normals = np.asarray(feats[:, 3:6], dtype=np.float32)
            out = self.segment(points, rgb, normals=normals)
            reference = np.asarray(item["labels"]).astype(np.int64)
            if "valid" in item:
                reference = np.where(np.asarray(item["valid"]), reference, self.config["ignore_index"])
            singles.append(out["pred_single"].astype(np.int64))
            voted.append(out["pred"].astype(np.int64) if self.config["votes"] else None)
            references.append(reference)
        return {"single": singles, "voted": voted}, references

    def metric_kwargs(self, name: str, options: dict) -> dict:
        return {"num_classes": self.num_classes, "ignore_index": self.config["ignore_index"],
                "class_names": self.class_names}

    def evaluate(self, data, split: str = "test", batch_size: int | None = None, limit: int | None = None,
                 **metric_options) -> dict:
        """Organised-grid models: the instance figures of the model and of the geometric baseline (module
        docstring) over mOSD-style scans (items with labels, raw part ids ``instance``, valid, width, height, id);
        other models: the semantic metrics."""
        if not self.grid_input:
            return super().evaluate(data, split, batch_size, limit, **metric_options)
        if metric_options:
            raise OptionError(f"organised-grid evaluation takes no metric options, got {sorted(metric_options)}")
        dataset = self.evaluation_dataset(data, split)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        if count == 0:
            raise InputError(f"{data}: nothing to evaluate")
        folder = getattr(dataset.base, "split", split)
        # the README numbers its groups per folder: learn/ is the train split
        return self._score_instances(dataset, count, "learn" if folder == "train" else folder)

    def _score_instances(self, dataset, count: int, folder: str) -> dict:
        from mtp.pipelines.point_cloud import range_instances as ri
        from mtp.pipelines.point_cloud.geometric import plane_and_clusters
        from mtp.pipelines.point_cloud.metrics import (ConfusionMatrix, InstanceSegmentationMeter, mosd_group_of,
                                                       score_mosd_scan, summarise_mosd_scans)

        methods = {"": lambda a: ri.segment(self.model, a["points"], a["colors"], a["width"], a["height"]),
                   "baseline/": lambda a: plane_and_clusters(a["points"])}
        rows, accumulators, points = {}, {}, 0
        self.model.eval()
        for i in range(count):
            item = dataset[i]
            a = ri.scan_arrays(item)
            group = mosd_group_of(folder, item.get("id", ""))
            points += len(a["points"])
            for prefix, method in methods.items():
                started = time.perf_counter()
                semantic, instance = method(a)
                seconds = time.perf_counter() - started
                for key in (group, "all"):
                    accumulator = accumulators.setdefault((prefix, key), (
                        InstanceSegmentationMeter(ignore_reference=range(10)),
                        ConfusionMatrix(2, ignore_index=INVALID_LABEL)))
                    row = score_mosd_scan(semantic, instance, a["labels"], a["raw"], a["valid"], *accumulator)
                    rows.setdefault((prefix, key), []).append({**row, "seconds": seconds})
                log.info("%s %s%s: %s", item.get("id", i), prefix or "learned/", group,
                         {k: row[k] for k in ("matched_iou", "over_segmented", "under_segmented", "miou")})
        metrics = {}
        for (prefix, key), group_rows in rows.items():
            summary = summarise_mosd_scans(group_rows, *accumulators[prefix, key])
            pooled = summary.pop("pooled")
            summary.update({f"pooled/{k}": v for k, v in pooled.items()})
            if key == "all":
                summary["points_per_second"] = points / summary["seconds"] if summary["seconds"] else None
            name = prefix if key == "all" else f"{prefix}{key}/"
            metrics.update({f"{name}{k}": v for k, v in summary.items()})
        metrics["samples"] = count
        return dict(sorted(metrics.items(), key=lambda kv: (kv[0].count("/"), kv[0])))

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        """The first evaluation scene rendered by prediction (<run>/renders/<id>.png)."""
        split = splits.get(recipe.eval.split)
        if split is None or len(split) == 0:
            return []
        item = self.evaluation_dataset(split)[0]
        points = np.asarray(item["points"])
        rgb = np.asarray(item["features"][:, :3]) if item["features"].shape[1] >= 3 else None
        normals = np.asarray(item["features"][:, 3:6]) if item["features"].shape[1] >= 6 else None
        with torch.no_grad():
            out = self.segment(points, rgb, item.get("width"), item.get("height"), normals)
        return [self._render(points, out, run_dir / "renders" / f"{item.get('id', 'scene')}.png",
                             str(item.get("id", "")), overwrite=True)]


class _SceneCrops(torch.utils.data.Dataset):
    """What the crop datasets share: `crops_per_scene` items per scene, scenes prepared once and cached, draws
    seeded by (seed, epoch, index)."""

    def __init__(self, scenes, crops_per_scene: int, seed: int, augment: bool):
        self.scenes, self.crops_per_scene, self.seed, self.augment = scenes, crops_per_scene, seed, augment
        self.epoch = 0
        self._cache: dict[int, tuple] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.scenes) * self.crops_per_scene

    def _valid_points(self, index: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """(item, points float [N, 3], valid bool [N]) of scene `index`; a scene without a valid point is refused."""
        item = self.scenes[index]
        points = torch.as_tensor(item["points"]).float()
        valid = torch.isfinite(points).all(1)
        if "valid" in item:
            valid &= torch.as_tensor(item["valid"]).bool()
        if not bool(valid.any()):
            raise InputError(f"scene {item.get('id', index)}: no valid point")
        return item, points, valid


class SegmentationCrops(_SceneCrops):
    """Training crops from scene datasets (items with points, features, labels, optional valid): invalid points
    dropped, grid-sampled once per scene (mode "center", cached), then per item a kNN sphere crop of
    `points` points around a random sampled point (a scene with fewer points is repeated cyclically), centred
    on its centroid; with `augment`, a random rotation about z, scale in [0.9, 1.1] and Gaussian jitter
    (0.25 * grid size). Draws are seeded by (seed, epoch, index): an epoch is reproducible."""

    def __init__(self, scenes, grid_size: float, points: int, crops_per_scene: int, seed: int = 0,
                 augment: bool = True, in_channels: int = 3):
        super().__init__(scenes, crops_per_scene, seed, augment)
        self.grid_size, self.points, self.in_channels = grid_size, points, in_channels

    def _scene(self, index: int):
        if index not in self._cache:
            from mtp.kernels import grid_sample

            item, points, valid = self._valid_points(index)
            points = points[valid]
            keep = grid_sample(points, self.grid_size, mode="center").index
            feats = torch.as_tensor(item["features"])[valid][keep]
            rgb = feats[:, :3].numpy() if feats.shape[1] >= 3 else None
            xyz = points[keep].numpy()
            self._cache[index] = (xyz, rgb, torch.as_tensor(item["labels"])[valid][keep].numpy(),
                                  np.abs(xyz).max(0))
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        xyz, rgb, labels, extent = self._scene(index // self.crops_per_scene)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        centre = xyz[rng.integers(len(xyz))]
        d = ((xyz - centre) ** 2).sum(1)
        if len(xyz) > self.points:
            chosen = np.argpartition(d, self.points - 1)[:self.points]
        else:
            chosen = np.resize(np.arange(len(xyz)), self.points)
        local = xyz[chosen] - xyz[chosen].mean(0)
        if self.augment:
            angle = rng.uniform(0, 2 * np.pi)
            cos, sin = np.cos(angle), np.sin(angle)
            local = local @ np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], dtype=np.float64).T
            local = local * rng.uniform(0.9, 1.1) + rng.normal(0, 0.25 * self.grid_size, local.shape)
        feats = model_features(xyz[chosen], None if rgb is None else rgb[chosen], self.in_channels, extent)
        feats = np.zeros((self.points, 0), np.float32) if feats is None else feats
        return {"points": torch.from_numpy(local.astype(np.float32)), "features": torch.from_numpy(feats),
                "labels": torch.from_numpy(labels[chosen].astype(np.int64))}

    @staticmethod
    def collate(batch):
        return {key: torch.stack([b[key] for b in batch]) for key in batch[0]}


class VoxelCrops(_SceneCrops):
    """Training items of voxel-dict models, after the official S3DIS train transforms as far as this pipeline's
    options go: invalid points dropped; per item, the scene augmented (`augment`: the pipeline's rotation about z
    about the centroid, scale in [0.9, 1.1], Gaussian jitter 0.25 * voxel_size), voxelised with a random point per
    voxel (Voxelize 'train'), the `points` voxels nearest a random voxel kept (SphereCrop 'random', point_max =
    points; None keeps the whole scene), then PositiveShift and feat = coord + colour (voxel_dict). Labels are the
    kept points'. Draws are seeded by (seed, epoch, index): an epoch is reproducible. Items: coord, grid_coord,
    rgb, normal, labels (per voxel). With `normals` (in_channels 9), ScanNet's transforms: the normals are the
    scenes' features 3-5 (rotated with the points), the scene is CenterShift-ed (apply_z) before anything else,
    and voxel_dict applies the rest."""

    def __init__(self, scenes, voxel_size: float, points: int | None, crops_per_scene: int, seed: int = 0,
                 augment: bool = True, normals: bool = False):
        super().__init__(scenes, crops_per_scene, seed, augment)
        self.voxel_size, self.points, self.normals = voxel_size, points, normals

    def _scene(self, index: int):
        if index not in self._cache:
            item, points, valid = self._valid_points(index)
            feats = torch.as_tensor(item["features"]).float()[valid]
            rgb = feats[:, :3] if feats.shape[1] >= 3 else None
            xyz, normal = points[valid], None
            if self.normals:
                if feats.shape[1] < 6:
                    raise InputError(f"scene {item.get('id', index)}: the model takes normals (features 3-5 after "
                                     f"the colours); the scene has {feats.shape[1]} feature columns")
                xyz, normal = center_shift(xyz), feats[:, 3:6]
            self._cache[index] = (xyz, rgb, normal, torch.as_tensor(item["labels"]).long()[valid])
        return self._cache[index]

    def __getitem__(self, index: int) -> dict:
        xyz, rgb, normal, labels = self._scene(index // self.crops_per_scene)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.augment:
            angle = rng.uniform(0, 2 * np.pi)
            cos, sin = np.cos(angle), np.sin(angle)
            rot = torch.tensor([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], dtype=torch.float32)
            centre = xyz.mean(0)
            xyz = (xyz - centre) @ rot.T * float(rng.uniform(0.9, 1.1)) + centre
            xyz = xyz + torch.from_numpy(rng.normal(0, 0.25 * self.voxel_size, xyz.shape).astype(np.float32))
            normal = None if normal is None else normal @ rot.T
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        sample = voxelize(xyz, self.voxel_size, mode="random", generator=generator)
        keep = sample.index
        if self.points is not None and len(keep) > self.points:
            coord = xyz[keep]
            d = ((coord - coord[int(rng.integers(len(keep)))]) ** 2).sum(1)
            chosen = torch.topk(d, self.points, largest=False).indices.sort().values
        else:
            chosen = torch.arange(len(keep))
        return {"coord": xyz[keep[chosen]], "grid_coord": sample.grid_coord[chosen],
                "rgb": None if rgb is None else rgb[keep[chosen]],
                "normal": None if normal is None else normal[keep[chosen]], "labels": labels[keep[chosen]]}

    @staticmethod
    def collate(batch):
        return voxel_dict(batch)


def render_labels(points: np.ndarray, labels: np.ndarray, path: Path, class_names: list[str], title: str = "",
                  overwrite: bool = False, max_points: int = 60000) -> Path:
    """A PNG of the valid points coloured by label: front view (x, -y: a Kinect camera's image) and top view
    (x, z); at most `max_points` points drawn (an evenly strided subset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = np.asarray(points, dtype=np.float32)
    keep = np.flatnonzero(np.isfinite(points).all(1) & (labels >= 0))
    if len(keep) > max_points:
        keep = keep[np.linspace(0, len(keep) - 1, max_points).astype(np.int64)]
    p, lab = points[keep], labels[keep]
    colours = PALETTE[lab % len(PALETTE)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, (a, b, sign, name) in zip(axes, ((0, 1, -1, "front (x, -y)"), (0, 2, 1, "top (x, z)"))):
        ax.scatter(p[:, a], sign * p[:, b], c=colours, s=0.5, linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    present = sorted(set(int(v) for v in np.unique(lab)))
    handles = [plt.Line2D([], [], marker="o", ls="", color=PALETTE[k % len(PALETTE)],
                          label=class_names[k] if k < len(class_names) else str(k)) for k in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------- classification
@dataclass
class ClassificationOptions:
    num_points: int = 1024           # points per shape (PointNet++ ModelNet40)
    sampling: str = "fps"            # fps (farthest point sampling from index 0) | first (the first N valid points)
    class_names: Optional[list] = None  # None: ModelNet40/10 names for 40/10 classes, else class_<i>
    top_k: int = 5                   # classes listed in the JSON's "top"
    augment: bool = True             # training only; the defaults are yanx27's ModelNet augmentation
    augment_dropout: float = 0.875   # a per-cloud ratio in [0, this) of points replaced by the first one; 0 off
    augment_scale: list[float] = field(default_factory=lambda: [0.8, 1.25])  # uniform scale range
    augment_anisotropic: bool = False  # one scale per axis (PointMLP) instead of one per cloud (yanx27)
    augment_shift: float = 0.1       # uniform shift in [-this, this] per axis
    augment_shuffle: bool = False    # a random point order per cloud (PointMLP; FPS then starts elsewhere)
    label_smoothing: float = 0.0

    def validate(self):
        if self.num_points < 1:
            raise ValueError(f"num_points={self.num_points}: expected >= 1")
        if self.sampling not in ("fps", "first"):
            raise ValueError(f"sampling={self.sampling!r}: expected fps or first")
        if not 0 <= self.augment_dropout < 1 or self.augment_shift < 0:
            raise ValueError("augment_dropout must be in [0, 1) and augment_shift >= 0")
        if len(self.augment_scale) != 2 or not 0 < self.augment_scale[0] <= self.augment_scale[1]:
            raise ValueError(f"augment_scale={self.augment_scale}: expected [low, high] with 0 < low <= high")


class PointCloudClassificationPipeline(_PointCloudPipeline):
    task = "point_cloud_classification"
    default_backbone = "pointnet2_cls_ssg"
    Options = ClassificationOptions
    metrics = ("point_classification",)
    monitor = ("val_accuracy", "max")
    max_batch_items = 64
    eval_batch_size = 16

    def shape_points(self, points: np.ndarray, normals: np.ndarray | None = None):
        """The standard preprocessing (module docstring) -> (xyz [num_points, 3], features [num_points, C])."""
        from mtp.kernels import farthest_point_sample

        valid = np.isfinite(points).all(1)
        points = points[valid]
        if len(points) == 0:
            raise InputError("the cloud has no valid (finite) point")
        n = self.config["num_points"]
        if len(points) < n:
            chosen = np.resize(np.arange(len(points)), n)
        elif self.config["sampling"] == "first":
            chosen = np.arange(n)
        else:
            chosen = farthest_point_sample(torch.from_numpy(np.ascontiguousarray(points))[None], n)[0].numpy()
        xyz = normalize_unit_sphere(points[chosen].astype(np.float64)).astype(np.float32)
        if self.in_channels == 0:
            return xyz, np.zeros((n, 0), np.float32)
        if self.in_channels != 3 or normals is None:
            raise InputError(f"the model takes {self.in_channels} feature channels (normals nx ny nz); the cloud has "
                             f"{'no normals' if normals is None else 'normals but the model takes another count'}")
        return xyz, normals[valid][chosen].astype(np.float32)

    def load(self, source):
        cloud = _load_cloud(source)
        return {"name": str(source) if isinstance(source, (str, Path)) else "<cloud>", "cloud": cloud}

    def preprocess(self, item) -> dict:
        xyz, feats = self.shape_points(item["cloud"].points, _normals(item["cloud"]))
        return {"points": torch.from_numpy(xyz), "features": torch.from_numpy(feats)}

    def forward(self, inputs: list[dict]) -> list:
        device = self._device()
        xyz = torch.stack([one["points"] for one in inputs]).to(device, self.dtype)
        feats = torch.stack([one["features"] for one in inputs]).to(device, self.dtype) if self.in_channels else None
        with torch.inference_mode():
            return list(torch.softmax(self.model(xyz, feats).float(), -1).cpu())

    def postprocess(self, output, item, inputs: dict) -> dict:
        names = self.class_names
        probs = output.tolist()
        best = int(output.argmax())
        top = output.argsort(descending=True)[:self.config["top_k"]].tolist()
        return {"name": item["name"], "class_id": best, "class_name": names[best], "probability": probs[best],
                "top": [{"class_id": k, "class_name": names[k], "probability": probs[k]} for k in top],
                "probabilities": {names[k]: p for k, p in enumerate(probs)}}

    def output_paths(self, relative: Path) -> list[Path]:
        return [relative.with_name(self.stem(relative) + ".json")]

    def save(self, result, paths: list[Path], overwrite: bool) -> list[Path]:
        import json

        with atomic_path(paths[0], overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        return [paths[0]]

    # ------------------------------------------------------------------ training and evaluation
    def datasets(self, recipe) -> dict:
        splits = super().datasets(recipe)
        train = splits.get("train")
        if self.config["class_names"] is None and getattr(train, "classes", None):
            self.config["class_names"] = list(train.classes)
        return {k: (v if v is None else _Shapes(v)) for k, v in splits.items()}

    def _batch(self, batch):
        device = self._device()
        xyz = batch["points"].to(device)
        feats = batch["features"].to(device) if self.in_channels else None
        return xyz, feats, batch["label"].to(device)

    def augment_shapes(self, xyz: torch.Tensor, feats: torch.Tensor | None):
        """A training batch (xyz [B, N, 3], features [B, N, C] or None) augmented in the order of yanx27's
        train_classification.py (provider.py): point dropout (features too), scale, shift on xyz only; then the
        optional point shuffle. Draws from the global torch RNG, which the engine reseeds from (seed, epoch)."""
        c = self.config
        b, n, _ = xyz.shape
        device = xyz.device
        if c["augment_dropout"] > 0:
            ratio = torch.rand(b, 1, device=device) * c["augment_dropout"]
            drop = (torch.rand(b, n, device=device) <= ratio)[..., None]
            xyz = torch.where(drop, xyz[:, :1], xyz)
            feats = None if feats is None else torch.where(drop, feats[:, :1], feats)
        scale = torch.empty(b, 1, 3 if c["augment_anisotropic"] else 1, device=device).uniform_(*c["augment_scale"])
        shift = torch.empty(b, 1, 3, device=device).uniform_(-c["augment_shift"], c["augment_shift"])
        xyz = xyz * scale + shift
        if c["augment_shuffle"]:
            order = torch.rand(b, n, device=device).argsort(1)[..., None]
            xyz = xyz.gather(1, order.expand(-1, -1, 3))
            feats = None if feats is None else feats.gather(1, order.expand(-1, -1, feats.shape[-1]))
        return xyz, feats

    def training_loss(self, batch):
        xyz, feats, label = self._batch(batch)
        if self.config["augment"]:
            xyz, feats = self.augment_shapes(xyz, feats)
        return torch.nn.functional.cross_entropy(self.model(xyz, feats), label,
                                                 label_smoothing=self.config["label_smoothing"])

    def validation_metrics(self, batch) -> dict:
        xyz, feats, label = self._batch(batch)
        logits = self.model(xyz, feats)
        return {"val_loss": torch.nn.functional.cross_entropy(logits, label),
                "val_accuracy": (logits.argmax(-1) == label).float().mean()}

    def evaluation_dataset(self, data, split: str = "test"):
        if isinstance(data, (str, Path)):
            data = self._named_dataset(data, split)
        return data if isinstance(data, _Shapes) else _Shapes(data)

    def default_dataset(self, root, split):
        from mtp.datasets.point_cloud.layouts import ModelNet

        return ModelNet(root, split, num_points=self.config["num_points"], normals=self.in_channels == 3)

    def evaluation_step(self, batch) -> tuple:
        xyz, feats, label = self._batch(batch)
        return self.model(xyz, feats).float().cpu(), label.cpu()

    def metric_kwargs(self, name: str, options: dict) -> dict:
        return {"num_classes": self.num_classes, "class_names": self.class_names}


class _Shapes(_Items):
    """Shapes as the classifier takes them: a fixed number of points per shape (cyclic repeat when fewer, first N
    when more) and collate_points batching."""

    def __init__(self, base):
        super().__init__(base)
        self.classes = getattr(base, "classes", None)

    @staticmethod
    def collate(batch):
        from mtp.datasets.point_cloud.layouts import collate_points

        sizes = {len(b["points"]) for b in batch}
        if len(sizes) > 1:
            n = min(sizes)
            batch = [{**b, "points": b["points"][:n], "features": b["features"][:n]} for b in batch]
        return collate_points(batch)


# ---------------------------------------------------------------------------------------------- metrics
class SegmentationMetrics:
    """Semantic segmentation over a whole split: one ConfusionMatrix summed over every scene (never per batch or
    per scene); per-class IoU, mIoU, overall and mean class accuracy. Voted predictions, when given, get their own
    matrix and ``vote/`` keys."""

    def __init__(self, num_classes: int, ignore_index: int | None = -1, class_names: list | None = None):
        from mtp.pipelines.point_cloud.metrics import ConfusionMatrix

        self.names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.single = ConfusionMatrix(num_classes, ignore_index)
        self.voted = ConfusionMatrix(num_classes, ignore_index)
        self.has_votes = False

    def update(self, prediction, target) -> None:
        if isinstance(prediction, dict):
            singles, voted = prediction["single"], prediction.get("voted") or []
        else:
            singles, voted = prediction, []
        targets = target if isinstance(target, (list, tuple)) else [target]
        singles = singles if isinstance(singles, (list, tuple)) else [singles]
        for p, t in zip(singles, targets):
            self.single.update(_valid_predictions(p, t, self.single.ignore_index), t)
        for p, t in zip(voted, targets):
            if p is not None:
                self.has_votes = True
                self.voted.update(_valid_predictions(p, t, self.voted.ignore_index), t)

    def compute(self) -> dict:
        out = self.single.summary(self.names)
        if self.has_votes:
            out.update({f"vote/{k}": v for k, v in self.voted.summary(self.names).items()})
        return out


def _valid_predictions(prediction, target, ignore_index):
    """A prediction of INVALID_LABEL on a point the reference scores (a valid point the model did not label) is
    an error rather than a silent class."""
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    scored = target != ignore_index if ignore_index is not None else np.ones(target.shape, bool)
    if (prediction[scored] < 0).any():
        raise ValueError("a scored reference point has no prediction (label -1): its coordinates are not finite")
    return np.where(scored, prediction, 0)


class ClassificationAccuracy:
    """Shape classification over a whole split: overall accuracy and mean class accuracy (ConfusionMatrix)."""

    def __init__(self, num_classes: int, class_names: list | None = None):
        from mtp.pipelines.point_cloud.metrics import ConfusionMatrix

        self.matrix = ConfusionMatrix(num_classes)
        self.names = list(class_names) if class_names else [str(i) for i in range(num_classes)]

    def update(self, prediction, target) -> None:
        self.matrix.update(prediction, target)

    def compute(self) -> dict:
        out = {"overall_accuracy": self.matrix.overall_accuracy,
               "mean_class_accuracy": self.matrix.mean_class_accuracy}
        out.update({f"accuracy/{n}": float(v) for n, v in zip(self.names, self.matrix.class_accuracy)})
        return out
