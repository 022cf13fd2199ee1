"""Point-cloud datasets in the standard on-disk layouts: ModelNet40/10 (resampled, with normals), ShapeNetPart,
S3DIS and mOSD.

Every dataset is a torch ``Dataset`` whose items are dicts::

    {"points": float32 [N, 3], "features": float32 [N, C], "label": int (classification)
     or "labels": long [N] (segmentation), "id": str, ...}

``features`` holds what the layout has besides coordinates, in a stated column order (normals nx ny nz; colours
r g b scaled to [0, 1]); C = 0 when it is switched off. Each constructor checks the whole layout (lists, names,
that every listed file exists) before any point is read, and names the file (and line) of anything wrong: a
split list naming a missing file, an unknown class name, an empty folder (``PointCloudLayoutError``, a
ValueError; a missing file or folder is a FileNotFoundError). Point files are read on access; a ragged or
non-numeric row is reported with its file and line. A relative ``root`` is looked up under ``$MTP_DATA_DIR``
(``mtp.files.resolve_data_path``); ``root=None`` means the layout's usual folder name under ``$MTP_DATA_DIR``.

Layouts:
- ModelNet40 / ModelNet10 (``modelnet40_normal_resampled/``, the PointNet++ release): ``modelnet40_shape_names.txt``
  (one class a line; the line order is the class index), ``modelnet40_train.txt`` / ``modelnet40_test.txt``
  (one shape id a line, ``<class>_<4 digits>`` e.g. ``airplane_0001``, ``night_stand_0012``), and
  ``<class>/<id>.txt`` with comma-separated rows ``x,y,z,nx,ny,nz``. ModelNet10 reads ``modelnet10_*`` files
  of the same folder. ``num_points`` keeps the FIRST N rows of the file (the resampled files are already in a
  farthest-point order, and the PointNet++ loaders take ``point_set[:npoints]`` the same way); a file with fewer
  rows is an error. ``normalize`` (default True, as the PointNet++ loader does) centres the kept points on their
  centroid and scales them into the unit sphere. Items: ``label`` (int class index), ``features`` the normals
  (C = 3) or nothing (``normals=False``).
- ModelNet40 HDF5 (``modelnet40_ply_hdf5_2048/``, PointNet's release, used by DGCNN and most classification
  code): ``shape_names.txt`` (40 classes in index order), ``train_files.txt`` / ``test_files.txt`` (one HDF5
  path a line, relative to PointNet's repository, e.g. ``data/modelnet40_ply_hdf5_2048/ply_data_train0.h5``:
  the file is looked up by its name in this folder) and the ``ply_data_*.h5`` files, each with ``data``
  float32 [shapes, 2048, 3] and ``label`` [shapes, 1] (and ``normal`` [shapes, 2048, 3]). ``num_points`` keeps
  the first N points of each shape. Items: ``label``, ``features`` the normals (``normals=True``) or nothing,
  ``id`` ``<file stem>/<row>``.
- ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal/``): ``synsetoffset2category.txt``
  (``<Category>\\t<synset>`` lines), ``train_test_split/shuffled_{train,val,test}_file_list.json`` (a JSON list
  of ``shape_data/<synset>/<token>``) and ``<synset>/<token>.txt`` with whitespace-separated rows
  ``x y z nx ny nz part``, ``part`` the global part id 0-49. ``SHAPENETPART_SEG_CLASSES`` maps the 16
  categories to their part ids (the PointNet++ / Pointcept convention: Airplane 0-3, Bag 4-5, ... Table 47-49);
  a category's index (``category``) is its position in that (alphabetical) mapping. Split ``trainval`` joins
  train and val. All points are returned unless ``num_points`` is given: then ``num_points`` of them drawn
  without replacement (with replacement when the shape has fewer), seeded by (``seed``, item index), so an
  item is the same on every access. Items: ``labels`` (long [N] global part ids), ``category`` (int),
  ``features`` the normals (C = 3) or nothing, ``id`` ``<synset>/<token>``.
- S3DIS (``Stanford3dDataset_v1.2_Aligned_Version/``): ``Area_<k>/<room>/Annotations/<class>_<i>.txt`` with
  whitespace-separated rows ``x y z r g b``; 13 classes (``S3DIS_CLASSES``: ceiling floor wall beam column
  window door table chair sofa bookcase board clutter). A ``stairs`` annotation (a handful of rooms) is
  clutter, as the PointNet / Pointcept preprocessing maps it. The room's own ``<room>.txt`` is not read (the
  annotations are the room, labelled). ``split="train"`` is every area but ``test_area`` (default 5, the
  usual "Area 5" split), ``"test"`` is ``test_area``; ``areas=`` chooses areas directly. Items are whole rooms
  (coordinates as stored, not shifted): ``labels`` (long [N] class index), ``instance`` (long [N]: each
  annotation file one instance, numbered 0.. in sorted file-name order within the room), ``features`` colours
  r g b / 255 (C = 3), ``id`` ``Area_<k>/<room>``. ``grid_size`` (metres) keeps one point per voxel
  (``mtp.kernels.grid_sample``, mode "first": deterministic), as S3DIS pipelines usually do before training.
  The original S3DIS release has one corrupt row (Area_5/hallway_6/Annotations/ceiling_1.txt, a control
  character inside a number): it is reported with its line; fix it by hand as every preprocessing does.
- ScanNet v2 (``scannet/``, as Pointcept's preprocess_scannet.py writes it from the ``_vh_clean_2`` meshes):
  ``train/``, ``val/``, ``test/`` folders, one scene each either as ``<scene>.pth`` (the older script, which
  PTv2 and LHDuan/ConDaFormer read: a ``torch.save``d dict of numpy arrays ``coord`` [N, 3], ``color`` [N, 3]
  0-255, ``normal`` [N, 3], ``semantic_gt20``, ``semantic_gt200``, ``instance_gt`` ([N] or [N, 1]) and
  ``scene_id``) or as a ``<scene>/`` folder of ``.npy`` files (current Pointcept: ``coord``, ``color``,
  ``normal``, ``segment20``, ``segment200``, ``instance``). ``num_classes`` 20 (``SCANNET20_CLASSES``, the
  benchmark's nyu40 subset) or 200 (``SCANNET200_CLASSES``) picks the label set; a label is the class index,
  and the preprocessings' "no class" value, 255 (PTv2 / ConDaFormer) or -1 (current Pointcept), becomes
  ``SCANNET_IGNORE`` (-1). The test split has no labels (every label -1); a train/val scene without them is an
  error. ``.pth`` files are read with torch's weights-only unpickler (numpy arrays allowed, no other objects).
  Items are whole scenes as stored: ``labels`` (long [N]), ``instance`` (long [N], the aggregation's group id,
  as stored, when the file has it), ``features`` colours r g b / 255 then normals nx ny nz (C = 6; C = 3 with
  ``normals=False``), ``id`` the scene name.
- mOSD (``pointcloud/mOSD/``, the modified Object Segmentation Database; see its README.md): ``learn/*.pcd``
  (``split="train"`` or ``"learn"``) and ``test/*.pcd`` (``split="test"``), organised 640 x 480 Kinect clouds
  (one test cloud is unorganised) with a ``label`` field and packed colours. README labels: 0 the invalid
  (NaN) points, 1-9 (parts of) the supporting table, 20-29 (parts of) the first object, 30-39 the second, ...
  Items keep every point in file order, NaN points included (``valid`` bool [N] marks the finite ones, so the
  pixel grid survives; ``width``, ``height`` give it):
  ``instance`` (long [N]) is the README label itself (each disjoint part its own segment, the point of the
  modified annotation: what a model-free geometric segmentation should find), or with ``merge_parts=True`` the
  README's merging (1-9 -> 1, others // 10: table 1, objects 2, 3, ...); 0 on every invalid point.
  ``labels`` (long [N]) is the semantic split the scheme implies: 0 table, 1 object, and
  ``MOSD_INVALID_LABEL`` (-1, use it as ``ignore_index``) on invalid points and points labelled 0. A label in
  10-19 (no meaning in the README) is an error naming the file. ``features``: colours r g b / 255 (C = 3).

``collate_points(batch)`` pads clouds of different sizes into one batch (see its docstring).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mtp.datasets.point_cloud.io import read_points
from mtp.files import data_dir, resolve_data_path

# ShapeNetPart: category -> its global part ids (PointNet++ / Pointcept order; 50 parts in all).
SHAPENETPART_SEG_CLASSES: dict[str, tuple[int, ...]] = {
    "Airplane": (0, 1, 2, 3), "Bag": (4, 5), "Cap": (6, 7), "Car": (8, 9, 10, 11), "Chair": (12, 13, 14, 15),
    "Earphone": (16, 17, 18), "Guitar": (19, 20, 21), "Knife": (22, 23), "Lamp": (24, 25, 26, 27),
    "Laptop": (28, 29), "Motorbike": (30, 31, 32, 33, 34, 35), "Mug": (36, 37), "Pistol": (38, 39, 40),
    "Rocket": (41, 42, 43), "Skateboard": (44, 45, 46), "Table": (47, 48, 49),
}
SHAPENETPART_CATEGORIES: tuple[str, ...] = tuple(SHAPENETPART_SEG_CLASSES)
SHAPENETPART_NUM_PARTS = 50
SHAPENETPART_SPLITS = ("train", "val", "test", "trainval")

S3DIS_CLASSES: tuple[str, ...] = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair",
                                  "sofa", "bookcase", "board", "clutter")
S3DIS_ALIASES = {"stairs": "clutter"}     # the standard preprocessing's mapping

# ScanNet v2: the benchmark's 20 classes (nyu40 ids 1-12, 14, 16, 24, 28, 33, 34, 36, 39) and ScanNet200's
# classes, in label order (LHDuan/ConDaFormer configs/scannet*/condaformer.py, Pointcept's scannet200_constants).
SCANNET20_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture")
SCANNET200_CLASSES: tuple[str, ...] = (
    "wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair", "bed", "pillow",
    "sink", "picture", "window", "toilet", "bookshelf", "monitor", "curtain", "book", "armchair", "coffee table", "box",
    "refrigerator", "lamp", "kitchen cabinet", "towel", "clothes", "tv", "nightstand", "counter", "dresser", "stool",
    "cushion", "plant", "ceiling", "bathtub", "end table", "dining table", "keyboard", "bag", "backpack",
    "toilet paper", "printer", "tv stand", "whiteboard", "blanket", "shower curtain", "trash can", "closet", "stairs",
    "microwave", "stove", "shoe", "computer tower", "bottle", "bin", "ottoman", "bench", "board", "washing machine",
    "mirror", "copier", "basket", "sofa chair", "file cabinet", "fan", "laptop", "shower", "paper", "person",
    "paper towel dispenser", "oven", "blinds", "rack", "plate", "blackboard", "piano", "suitcase", "rail", "radiator",
    "recycling bin", "container", "wardrobe", "soap dispenser", "telephone", "bucket", "clock", "stand", "light",
    "laundry basket", "pipe", "clothes dryer", "guitar", "toilet paper holder", "seat", "speaker", "column", "bicycle",
    "ladder", "bathroom stall", "shower wall", "cup", "jacket", "storage bin", "coffee maker", "dishwasher",
    "paper towel roll", "machine", "mat", "windowsill", "bar", "toaster", "bulletin board", "ironing board",
    "fireplace", "soap dish", "kitchen counter", "doorframe", "toilet paper dispenser", "mini fridge",
    "fire extinguisher", "ball", "hat", "shower curtain rod", "water cooler", "paper cutter", "tray", "shower door",
    "pillar", "ledge", "toaster oven", "mouse", "toilet seat cover dispenser", "furniture", "cart", "storage container",
    "scale", "tissue box", "light switch", "crate", "power outlet", "decoration", "sign", "projector", "closet door",
    "vacuum cleaner", "candle", "plunger", "stuffed animal", "headphones", "dish rack", "broom", "guitar case",
    "range hood", "dustpan", "hair dryer", "water bottle", "handicap bar", "purse", "vent", "shower floor",
    "water pitcher", "mailbox", "bowl", "paper bag", "alarm clock", "music stand", "projector screen", "divider",
    "laundry detergent", "bathroom counter", "object", "bathroom vanity", "closet wall", "laundry hamper",
    "bathroom stall door", "ceiling light", "trash bin", "dumbbell", "stair rail", "tube", "bathroom cabinet",
    "cd case", "closet rod", "coffee kettle", "structure", "shower head", "keyboard piano", "case of water bottles",
    "coat rack", "storage organizer", "folded chair", "fire alarm", "power strip", "calendar", "poster", "potted plant",
    "luggage", "mattress")
SCANNET_IGNORE = -1                       # label of unannotated points and of classes outside the label set
SCANNET_STORED_IGNORE = (-1, 255)         # "no class" as current Pointcept / PTv2 and ConDaFormer's pcr store it
SCANNET_SPLITS = ("train", "val", "test")

MOSD_INVALID_LABEL = -1                   # semantic label of NaN / unlabelled mOSD points
MOSD_TABLE, MOSD_OBJECT = 0, 1

DEFAULT_ROOTS = {
    "modelnet": "modelnet40_normal_resampled",
    "shapenetpart": "shapenetcore_partanno_segmentation_benchmark_v0_normal",
    "s3dis": "Stanford3dDataset_v1.2_Aligned_Version",
    "mosd": "pointcloud/mOSD",
    "modelnet_h5": "modelnet40_ply_hdf5_2048",
    "scannet": "scannet",
}


class PointCloudLayoutError(ValueError):
    """A dataset folder or file that does not follow its layout; the message names the file (and line)."""


# ---------------------------------------------------------------------------------------------- helpers
def _root(root, key: str) -> Path:
    if root is None:
        base = data_dir()
        if base is None:
            raise ValueError(f"{key}: no root given and $MTP_DATA_DIR is not set (expected a folder "
                             f"{DEFAULT_ROOTS[key]}/ under it)")
        path = base / DEFAULT_ROOTS[key]
    else:
        path = resolve_data_path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"{key}: {path} is not a folder" + ("" if path.exists() else " (does not exist)"))
    return path


def _text_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based numbers; a missing or empty file is an error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the {what})")
    lines = [(i, line.strip()) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    if not lines:
        raise PointCloudLayoutError(f"{path}: empty {what}")
    return lines


def read_table(path: str | Path, columns: int, delimiter: str | None = None, max_rows: int | None = None,
               what: str = "") -> np.ndarray:
    """A numeric text table as float64 [R, columns] (the first ``max_rows`` rows when given).

    Any row with another number of columns, or a token that is not a number, is a PointCloudLayoutError naming
    the file and line; so is a file without rows.
    """
    path = Path(path)
    label = f" ({what})" if what else ""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file{label}")
    if path.stat().st_size == 0:
        raise PointCloudLayoutError(f"{path}: empty file{label}; expected rows of {columns} numbers")
    table = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # numpy warns on a file without data: reported below
            table = np.loadtxt(path, dtype=np.float64, delimiter=delimiter, ndmin=2, max_rows=max_rows,
                               comments=None)
    except ValueError:
        pass
    if table is None or table.shape[1] != columns or not len(table):
        _diagnose_table(path, columns, delimiter, max_rows, label)
    return table


def _diagnose_table(path: Path, columns: int, delimiter: str | None, max_rows: int | None, label: str) -> None:
    rows = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            tokens = [t.strip() for t in line.split(delimiter)] if delimiter else line.split()
            if len(tokens) != columns:
                raise PointCloudLayoutError(f"{path}: line {number} has {len(tokens)} columns, expected {columns}"
                                            f"{label}")
            for token in tokens:
                try:
                    float(token)
                except ValueError:
                    raise PointCloudLayoutError(f"{path}: line {number}: {token[:40]!r} is not a number"
                                                f"{label}") from None
            rows += 1
            if max_rows is not None and rows >= max_rows:
                break
    if rows == 0:
        raise PointCloudLayoutError(f"{path}: no data rows{label}; expected rows of {columns} numbers")
    raise PointCloudLayoutError(f"{path}: not a table of {columns} numbers a row{label}")


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centroid to the origin, farthest point at radius 1 (PointNet++'s pc_normalize); an empty cloud as it is."""
    centred = points - points.mean(axis=0)
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max()) if len(points) else 0.0
    return centred / radius if radius > 0 else centred


def _features(*arrays: np.ndarray, n: int) -> torch.Tensor:
    if not arrays:
        return torch.zeros(n, 0, dtype=torch.float32)
    return torch.from_numpy(np.concatenate(arrays, axis=1).astype(np.float32))


def collate_points(batch: list[dict]) -> dict:
    """Batch clouds of different sizes: ``points`` [B, Nmax, 3] padded with NaN (what ``mtp.kernels`` treats
    as invalid), ``features`` [B, Nmax, C] padded with 0, per-point long fields (``labels``, ``instance``)
    padded with -1, ``valid`` padded with False, ``lengths`` [B]; ``label``/``category`` become long [B];
    ``id`` becomes ``ids`` (a list); other entries become lists."""
    lengths = torch.tensor([len(item["points"]) for item in batch], dtype=torch.long)
    size = int(lengths.max()) if len(batch) else 0
    out: dict = {"lengths": lengths}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key == "id":
            out["ids"] = values
        elif isinstance(values[0], torch.Tensor) and values[0].dim() >= 1 and values[0].shape[0] == len(
                batch[0]["points"]):
            fill = float("nan") if key == "points" else (False if values[0].dtype == torch.bool else
                                                         -1 if not values[0].is_floating_point() else 0.0)
            padded = torch.full((len(batch), size, *values[0].shape[1:]), fill, dtype=values[0].dtype)
            for i, value in enumerate(values):
                padded[i, :len(value)] = value
            out[key] = padded
        elif isinstance(values[0], int) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


# ---------------------------------------------------------------------------------------------- ModelNet
class ModelNet(Dataset):
    """ModelNet40 (``num_classes=40``) or ModelNet10 (10) in the resampled PointNet++ layout (module docstring).

    ``num_points``: the first N rows of each file (None: all of them); ``normals``: features nx ny nz (else
    C = 0); ``normalize``: centroid to the origin, farthest point at radius 1."""

    def __init__(self, root: str | Path | None = None, split: str = "train", num_classes: int = 40,
                 num_points: int | None = 1024, normals: bool = True, normalize: bool = True):
        if num_classes not in (10, 40):
            raise ValueError(f"ModelNet: num_classes must be 10 or 40, got {num_classes}")
        if split not in ("train", "test"):
            raise ValueError(f"ModelNet: split must be 'train' or 'test', got {split!r}")
        if num_points is not None and num_points < 1:
            raise ValueError(f"ModelNet: num_points must be >= 1 or None, got {num_points}")
        self.root = _root(root, "modelnet")
        self.split, self.num_points, self.normals, self.normalize = split, num_points, normals, normalize
        prefix = f"modelnet{num_classes}"
        names_file = self.root / f"{prefix}_shape_names.txt"
        self.classes: list[str] = []
        for number, name in _text_lines(names_file, "list of class names"):
            if name in self.classes:
                raise PointCloudLayoutError(f"{names_file}: line {number}: class {name!r} listed twice")
            self.classes.append(name)
        index = {name: i for i, name in enumerate(self.classes)}
        list_file = self.root / f"{prefix}_{split}.txt"
        self.items: list[tuple[str, int, Path]] = []
        for number, shape_id in _text_lines(list_file, f"{split} split list"):
            match = re.fullmatch(r"(.+)_(\d+)", shape_id)
            if match is None:
                raise PointCloudLayoutError(f"{list_file}: line {number}: {shape_id[:60]!r} is not a shape id "
                                            f"<class>_<number> (e.g. airplane_0001)")
            name = match.group(1)
            if name not in index:
                raise PointCloudLayoutError(f"{list_file}: line {number}: unknown class {name!r} in {shape_id!r} "
                                            f"(not in {names_file.name})")
            path = self.root / name / f"{shape_id}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{list_file}: line {number}: {shape_id} has no point file {path}")
            self.items.append((shape_id, index[name], path))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        shape_id, label, path = self.items[index]
        table = read_table(path, 6, delimiter=",", max_rows=self.num_points, what="rows x,y,z,nx,ny,nz")
        if self.num_points is not None and len(table) < self.num_points:
            raise PointCloudLayoutError(f"{path}: {len(table)} points, fewer than num_points={self.num_points}")
        points = table[:, :3]
        if self.normalize:
            points = normalize_unit_sphere(points)
        features = _features(table[:, 3:6], n=len(table)) if self.normals else _features(n=len(table))
        return {"points": torch.from_numpy(points.astype(np.float32)), "features": features, "label": label,
                "id": shape_id}


class ModelNetH5(Dataset):
    """ModelNet40 in PointNet's HDF5 release (``modelnet40_ply_hdf5_2048/``; module docstring).

    The clouds are read into memory on construction (the first ``num_points`` of each, 2,048 at most: about
    100 MB for the train split at 1,024), as every loader of this release does. ``normalize`` is off by
    default: the release is already centred and scaled into the unit sphere, and PointNet/DGCNN use it as
    stored. ``normals``: the ``normal`` array as features (C = 3) when the files have one."""

    def __init__(self, root: str | Path | None = None, split: str = "train", num_points: int | None = 1024,
                 normals: bool = False, normalize: bool = False):
        import h5py

        if split not in ("train", "test"):
            raise ValueError(f"ModelNetH5: split must be 'train' or 'test', got {split!r}")
        if num_points is not None and not 1 <= num_points <= 2048:
            raise ValueError(f"ModelNetH5: num_points must be in 1..2048 or None, got {num_points}")
        self.root = _root(root, "modelnet_h5")
        self.split, self.normalize = split, normalize
        names_file = self.root / "shape_names.txt"
        self.classes = [name for _, name in _text_lines(names_file, "list of class names")]
        list_file = self.root / f"{split}_files.txt"
        points, features, labels, self.ids = [], [], [], []
        for number, entry in _text_lines(list_file, f"{split} file list"):
            # Entries are paths relative to PointNet's repository (data/modelnet40_ply_hdf5_2048/...): the file
            # is looked up by its name in this folder.
            path = self.root / Path(entry).name
            if not path.is_file():
                raise FileNotFoundError(f"{list_file}: line {number}: {entry} has no file {path}")
            try:
                with h5py.File(path, "r") as f:
                    missing = [key for key in ("data", "label") if key not in f]
                    if missing:
                        raise PointCloudLayoutError(f"{path}: no {' or '.join(map(repr, missing))} array (has "
                                                    f"{', '.join(sorted(f.keys())) or 'nothing'}); expected 'data' "
                                                    f"[shapes, points, 3] and 'label' [shapes, 1]")
                    data = f["data"]
                    if data.ndim != 3 or data.shape[2] != 3:
                        raise PointCloudLayoutError(f"{path}: 'data' has shape {tuple(data.shape)}, expected "
                                                    f"[shapes, points, 3]")
                    if num_points is not None and data.shape[1] < num_points:
                        raise PointCloudLayoutError(f"{path}: {data.shape[1]} points a shape, fewer than "
                                                    f"num_points={num_points}")
                    keep = data.shape[1] if num_points is None else num_points
                    cloud = np.asarray(data[:, :keep], dtype=np.float32)
                    label = np.asarray(f["label"]).reshape(-1).astype(np.int64)
                    normal = None
                    if normals:
                        if "normal" not in f:
                            raise PointCloudLayoutError(f"{path}: no 'normal' array for normals=True")
                        normal = np.asarray(f["normal"][:, :keep], dtype=np.float32)
            except OSError as err:  # h5py's error for a truncated or non-HDF5 file
                raise PointCloudLayoutError(f"{path}: not a readable HDF5 file ({err})") from None
            if len(label) != len(cloud):
                raise PointCloudLayoutError(f"{path}: {len(label)} labels for {len(cloud)} shapes")
            bad = (label < 0) | (label >= len(self.classes))
            if bad.any():
                raise PointCloudLayoutError(f"{path}: label {int(label[bad][0])} of shape {int(np.flatnonzero(bad)[0])}"
                                            f" is not a class of {names_file.name} (0..{len(self.classes) - 1})")
            points.append(cloud)
            labels.append(label)
            if normal is not None:
                features.append(normal)
            self.ids += [f"{path.stem}/{row}" for row in range(len(cloud))]
        self.points = np.concatenate(points)
        self.labels = np.concatenate(labels)
        self.features = np.concatenate(features) if features else None

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict:
        points = self.points[index]
        if self.normalize:
            points = normalize_unit_sphere(points)
        features = (torch.from_numpy(self.features[index].copy()) if self.features is not None
                    else _features(n=len(points)))
        return {"points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), "features": features,
                "label": int(self.labels[index]), "id": self.ids[index]}


def modelnet40(root=None, split: str = "train", **kwargs) -> ModelNet:
    return ModelNet(root, split, num_classes=40, **kwargs)


def modelnet10(root=None, split: str = "train", **kwargs) -> ModelNet:
    return ModelNet(root, split, num_classes=10, **kwargs)


# ---------------------------------------------------------------------------------------------- ShapeNetPart
class ShapeNetPart(Dataset):
    """ShapeNetPart part segmentation (module docstring); ``categories`` limits the shapes to some categories
    (names as in ``SHAPENETPART_SEG_CLASSES``); ``category`` stays the index among all 16."""

    def __init__(self, root: str | Path | None = None, split: str = "train", num_points: int | None = None,
                 normals: bool = True, categories: Sequence[str] | None = None, seed: int = 0):
        if split not in SHAPENETPART_SPLITS:
            raise ValueError(f"ShapeNetPart: split must be one of {', '.join(SHAPENETPART_SPLITS)}, got {split!r}")
        if num_points is not None and num_points < 1:
            raise ValueError(f"ShapeNetPart: num_points must be >= 1 or None, got {num_points}")
        unknown = [c for c in categories or () if c not in SHAPENETPART_SEG_CLASSES]
        if unknown:
            raise ValueError(f"ShapeNetPart: unknown categories {unknown}; expected some of "
                             f"{', '.join(SHAPENETPART_CATEGORIES)}")
        self.root = _root(root, "shapenetpart")
        self.split, self.num_points, self.normals, self.seed = split, num_points, normals, seed
        synset_file = self.root / "synsetoffset2category.txt"
        self.synsets: dict[str, str] = {}      # synset -> category name
        for number, line in _text_lines(synset_file, "category list"):
            parts = line.split()
            if len(parts) != 2:
                raise PointCloudLayoutError(f"{synset_file}: line {number}: expected '<Category> <synset>', got "
                                            f"{line[:60]!r}")
            name, synset = parts
            if name not in SHAPENETPART_SEG_CLASSES:
                raise PointCloudLayoutError(f"{synset_file}: line {number}: unknown category {name!r}; expected "
                                            f"one of {', '.join(SHAPENETPART_CATEGORIES)}")
            self.synsets[synset] = name
        wanted = set(categories) if categories else None
        self.items: list[tuple[str, int, Path]] = []
        for part in (("train", "val") if split == "trainval" else (split,)):
            list_file = self.root / "train_test_split" / f"shuffled_{part}_file_list.json"
            if not list_file.is_file():
                raise FileNotFoundError(f"{list_file}: no such file (the {part} split list)")
            try:
                entries = json.loads(list_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise PointCloudLayoutError(f"{list_file}: not valid JSON ({err})") from None
            if not isinstance(entries, list) or not entries:
                raise PointCloudLayoutError(f"{list_file}: expected a non-empty JSON list of "
                                            f"'shape_data/<synset>/<token>' entries")
            for number, entry in enumerate(entries):
                where = f"{list_file}: entry {number}"
                pieces = entry.split("/") if isinstance(entry, str) else []
                if len(pieces) != 3 or not pieces[1] or not pieces[2]:
                    raise PointCloudLayoutError(f"{where}: {str(entry)[:80]!r} is not 'shape_data/<synset>/<token>'")
                _, synset, token = pieces
                if synset not in self.synsets:
                    raise PointCloudLayoutError(f"{where}: unknown synset {synset} (not in {synset_file.name})")
                name = self.synsets[synset]
                if wanted is not None and name not in wanted:
                    continue
                path = self.root / synset / f"{token}.txt"
                if not path.is_file():
                    raise FileNotFoundError(f"{where}: {entry} has no point file {path}")
                self.items.append((f"{synset}/{token}", SHAPENETPART_CATEGORIES.index(name), path))
        if not self.items:
            raise PointCloudLayoutError(f"{self.root}: no {split} shapes" + (f" of {sorted(wanted)}" if wanted else ""))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        shape_id, category, path = self.items[index]
        table = read_table(path, 7, what="rows x y z nx ny nz part")
        parts = table[:, 6]
        allowed = SHAPENETPART_SEG_CLASSES[SHAPENETPART_CATEGORIES[category]]
        bad = np.flatnonzero((parts != np.round(parts)) | ~np.isin(parts, allowed))
        if len(bad):
            raise PointCloudLayoutError(f"{path}: row {bad[0] + 1}: part {parts[bad[0]]:g} is not a part of "
                                        f"{SHAPENETPART_CATEGORIES[category]} (its parts: {list(allowed)})")
        if self.num_points is not None:
            rng = np.random.default_rng((self.seed, index))
            choice = rng.choice(len(table), self.num_points, replace=len(table) < self.num_points)
            table = table[choice]
        features = _features(table[:, 3:6], n=len(table)) if self.normals else _features(n=len(table))
        return {"points": torch.from_numpy(table[:, :3].astype(np.float32)), "features": features,
                "labels": torch.from_numpy(table[:, 6].astype(np.int64)), "category": category, "id": shape_id}


# ---------------------------------------------------------------------------------------------- S3DIS
def s3dis_class(name: str) -> int:
    """Class index of an S3DIS annotation class name (``stairs`` -> clutter); KeyError if unknown."""
    name = S3DIS_ALIASES.get(name.lower(), name.lower())
    if name not in S3DIS_CLASSES:
        raise KeyError(name)
    return S3DIS_CLASSES.index(name)


class S3DIS(Dataset):
    """S3DIS rooms (module docstring): ``split`` train/test around ``test_area``, or ``areas`` explicitly."""

    def __init__(self, root: str | Path | None = None, split: str = "train", test_area: int = 5,
                 areas: Sequence[int] | None = None, grid_size: float | None = None):
        if areas is None:
            if split not in ("train", "test"):
                raise ValueError(f"S3DIS: split must be 'train' or 'test' (or give areas=), got {split!r}")
            areas = [test_area] if split == "test" else [a for a in range(1, 7) if a != test_area]
        self.root = _root(root, "s3dis")
        self.areas, self.grid_size = list(areas), grid_size
        self.rooms: list[tuple[str, list[tuple[Path, int]]]] = []
        for area in self.areas:
            folder = self.root / f"Area_{area}"
            if not folder.is_dir():
                raise FileNotFoundError(f"S3DIS: no folder {folder} for area {area}")
            rooms = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not rooms:
                raise PointCloudLayoutError(f"{folder}: empty area (no room folders)")
            for room in rooms:
                self.rooms.append((f"Area_{area}/{room.name}", self._annotations(room)))

    @staticmethod
    def _annotations(room: Path) -> list[tuple[Path, int]]:
        folder = room / "Annotations"
        if not folder.is_dir():
            raise FileNotFoundError(f"{room}: no Annotations folder")
        files = sorted(p for p in folder.iterdir() if p.suffix == ".txt" and not p.name.startswith("."))
        if not files:
            raise PointCloudLayoutError(f"{folder}: empty Annotations folder (no <class>_<i>.txt files)")
        found = []
        for path in files:
            match = re.fullmatch(r"(.+)_(\d+)", path.stem)
            if match is None:
                raise PointCloudLayoutError(f"{path}: annotation file name is not <class>_<i>.txt")
            try:
                found.append((path, s3dis_class(match.group(1))))
            except (KeyError, ValueError):
                raise PointCloudLayoutError(f"{path}: unknown class {match.group(1)!r}; expected one of "
                                            f"{' '.join(S3DIS_CLASSES)} (or stairs)") from None
        return found

    def __len__(self) -> int:
        return len(self.rooms)

    def __getitem__(self, index: int) -> dict:
        room_id, annotations = self.rooms[index]
        tables, labels, instances = [], [], []
        for instance, (path, label) in enumerate(annotations):
            table = read_table(path, 6, what="rows x y z r g b")
            tables.append(table)
            labels.append(np.full(len(table), label, dtype=np.int64))
            instances.append(np.full(len(table), instance, dtype=np.int64))
        table = np.concatenate(tables)
        points = torch.from_numpy(table[:, :3].astype(np.float32))
        item = {"points": points, "features": _features(table[:, 3:6] / 255.0, n=len(table)),
                "labels": torch.from_numpy(np.concatenate(labels)),
                "instance": torch.from_numpy(np.concatenate(instances)), "id": room_id}
        if self.grid_size:
            from mtp.kernels import grid_sample

            keep = grid_sample(points, self.grid_size, mode="first").index
            item.update({key: item[key][keep] for key in ("points", "features", "labels", "instance")})
        return item


# ---------------------------------------------------------------------------------------------- ScanNet
def _numpy_safe_globals() -> list:
    """What torch's weights-only unpickler needs for numpy arrays (no code runs): the array rebuild under its
    numpy 2 and numpy 1 (``numpy.core``) names, ndarray, dtype and the dtype classes newer numpy pickles."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:          # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtypes = getattr(np, "dtypes", None)       # numpy >= 1.25 pickles a dtype by its class
    classes = [getattr(dtypes, name) for name in dtypes.__all__] if dtypes else []
    return [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype, *classes]


class ScanNet(Dataset):
    """ScanNet v2 scenes in Pointcept's preprocessed layout (module docstring): ``<split>/<scene>.pth`` or
    ``<split>/<scene>/*.npy``; ``num_classes`` 20 or 200 picks the label set; ``normals`` adds nx ny nz to the
    features (after the colours)."""

    LABEL_KEYS = {(".pth", 20): "semantic_gt20", (".pth", 200): "semantic_gt200", ("npy", 20): "segment20",
                  ("npy", 200): "segment200"}
    INSTANCE_KEYS = {".pth": "instance_gt", "npy": "instance"}

    def __init__(self, root: str | Path | None = None, split: str = "train", num_classes: int = 20,
                 normals: bool = True):
        if num_classes not in (20, 200):
            raise ValueError(f"ScanNet: num_classes must be 20 or 200, got {num_classes}")
        if split not in SCANNET_SPLITS:
            raise ValueError(f"ScanNet: split must be one of {', '.join(SCANNET_SPLITS)}, got {split!r}")
        self.root = _root(root, "scannet")
        self.split, self.num_classes, self.normals = split, num_classes, normals
        self.classes = list(SCANNET20_CLASSES if num_classes == 20 else SCANNET200_CLASSES)
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ScanNet: no folder {folder} for the {split} split")
        self.scenes: list[tuple[str, Path]] = []          # (scene name, its .pth file or .npy folder)
        for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            if path.is_dir():
                self._check_npy_folder(path)
                self.scenes.append((path.name, path))
            elif path.suffix == ".pth":
                self.scenes.append((path.stem, path))
        names = [name for name, _ in self.scenes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise PointCloudLayoutError(f"{folder}: scene {twice[0]} is there both as {twice[0]}.pth and as a "
                                        f"{twice[0]}/ folder of .npy files")
        if not self.scenes:
            raise PointCloudLayoutError(f"{folder}: empty split folder (no <scene>.pth files and no <scene>/ "
                                        f"folders of coord.npy, color.npy, normal.npy, ...)")

    def _wanted(self, kind: str) -> list[str]:
        keys = ["coord", "color"] + (["normal"] if self.normals else [])
        return keys + ([self.LABEL_KEYS[kind, self.num_classes]] if self.split != "test" else [])

    def _check_npy_folder(self, folder: Path) -> None:
        missing = [f"{key}.npy" for key in self._wanted("npy") if not (folder / f"{key}.npy").is_file()]
        if missing:
            raise PointCloudLayoutError(f"{folder}: no {', '.join(missing)} (a scene folder of Pointcept's "
                                        f"ScanNet layout holds {', '.join(k + '.npy' for k in self._wanted('npy'))})")

    @staticmethod
    def _load_pth(path: Path) -> dict:
        from mtp.weights import safe_reason

        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise PointCloudLayoutError(f"{path}: not a readable scene file ({type(err).__name__}: "
                                        f"{safe_reason(err)}); expected a torch.save'd dict of numpy arrays") from None
        if not isinstance(data, dict):
            raise PointCloudLayoutError(f"{path}: expected a dict (coord, color, normal, semantic_gt20, ...), "
                                        f"found {type(data).__name__}")
        return data

    def _arrays(self, path: Path) -> tuple[dict, str]:
        """The scene's arrays by key (those of ``_wanted`` plus the instance ids when stored) and its kind."""
        kind = ".pth" if path.suffix == ".pth" else "npy"
        keys = self._wanted(kind) + [self.INSTANCE_KEYS[kind]]
        if kind == ".pth":
            data = self._load_pth(path)
            missing = [key for key in self._wanted(kind) if key not in data]
            if missing:
                raise PointCloudLayoutError(f"{path}: no {', '.join(missing)} (found {', '.join(map(str, data))}; "
                                            f"expected {', '.join(self._wanted(kind))})")
            return {key: np.asarray(data[key]) for key in keys if key in data}, kind
        self._check_npy_folder(path)
        return {key: self._load_npy(path / f"{key}.npy") for key in keys if (path / f"{key}.npy").is_file()}, kind

    @staticmethod
    def _load_npy(path: Path) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)       # an object array (a pickle) is refused, not run
        except (ValueError, OSError) as err:
            raise PointCloudLayoutError(f"{path}: not a readable .npy array ({err})") from None

    def _labels(self, values: np.ndarray, n: int, where: str) -> np.ndarray:
        values = values.reshape(-1) if values.size == n else values
        if values.shape != (n,):
            raise PointCloudLayoutError(f"{where}: shape {values.shape}, expected [{n}] or [{n}, 1]")
        labels = values.astype(np.int64)
        stored_ignore = np.isin(labels, SCANNET_STORED_IGNORE)
        bad = np.flatnonzero((labels != values) | (~stored_ignore & ((labels < 0) | (labels >= self.num_classes))))
        if len(bad):
            raise PointCloudLayoutError(f"{where}: point {bad[0]} has label {values[bad[0]]}; expected 0-"
                                        f"{self.num_classes - 1} or {' / '.join(map(str, SCANNET_STORED_IGNORE))} "
                                        f"(no class)")
        return np.where(stored_ignore, SCANNET_IGNORE, labels)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        name, path = self.scenes[index]
        arrays, kind = self._arrays(path)

        def where(key: str) -> str:
            return f"{path}: {key}" if kind == ".pth" else str(path / f"{key}.npy")

        coord = arrays["coord"]
        if coord.ndim != 2 or coord.shape[1] != 3 or not len(coord):
            raise PointCloudLayoutError(f"{where('coord')}: shape {coord.shape}, expected [N, 3] with N > 0")
        n = len(coord)
        for key in ("color", "normal") if self.normals else ("color",):
            if arrays[key].shape != (n, 3):
                raise PointCloudLayoutError(f"{where(key)}: shape {arrays[key].shape}, expected [{n}, 3] (one row "
                                            f"per point of coord)")
        colour = arrays["color"].astype(np.float64)
        if colour.min() < 0 or colour.max() > 255:
            raise PointCloudLayoutError(f"{where('color')}: values in [{colour.min():g}, {colour.max():g}], "
                                        f"expected 0-255")
        features = [colour / 255.0] + ([arrays["normal"]] if self.normals else [])
        if self.split == "test":
            labels = np.full(n, SCANNET_IGNORE, dtype=np.int64)
        else:
            key = self.LABEL_KEYS[kind, self.num_classes]
            labels = self._labels(arrays[key], n, where(key))
        item = {"points": torch.from_numpy(coord.astype(np.float32)), "features": _features(*features, n=n),
                "labels": torch.from_numpy(labels), "id": name}
        instance = arrays.get(self.INSTANCE_KEYS[kind])
        if instance is not None:
            if instance.size != n:
                raise PointCloudLayoutError(f"{where(self.INSTANCE_KEYS[kind])}: shape {instance.shape}, expected "
                                            f"[{n}] or [{n}, 1]")
            item["instance"] = torch.from_numpy(instance.reshape(-1).astype(np.int64))
        return item


# ---------------------------------------------------------------------------------------------- mOSD
def mosd_semantic(raw: np.ndarray) -> np.ndarray:
    """mOSD README labels -> semantic labels: 0 -> MOSD_INVALID_LABEL, 1-9 -> MOSD_TABLE, >= 20 -> MOSD_OBJECT."""
    raw = np.asarray(raw).astype(np.int64)
    out = np.full(raw.shape, MOSD_INVALID_LABEL, dtype=np.int64)
    out[(raw >= 1) & (raw <= 9)] = MOSD_TABLE
    out[raw >= 20] = MOSD_OBJECT
    return out


def mosd_merge_parts(raw: np.ndarray) -> np.ndarray:
    """The README's merging of object parts: 0 stays 0, 1-9 -> 1 (the table), others // 10 (objects 2, 3, ...)."""
    raw = np.asarray(raw).astype(np.int64)
    return np.where(raw == 0, 0, np.where(raw <= 9, 1, raw // 10))


class MOSD(Dataset):
    """mOSD scenes (module docstring): ``split`` "train"/"learn" (learn/) or "test" (test/)."""

    def __init__(self, root: str | Path | None = None, split: str = "test", merge_parts: bool = False):
        folders = {"train": "learn", "learn": "learn", "test": "test"}
        if split not in folders:
            raise ValueError(f"MOSD: split must be 'train' ('learn') or 'test', got {split!r}")
        self.root = _root(root, "mosd")
        self.split, self.merge_parts = split, merge_parts
        folder = self.root / folders[split]
        if not folder.is_dir():
            raise FileNotFoundError(f"MOSD: no folder {folder} for the {split} split")

        def number(path: Path):
            digits = re.sub(r"\D", "", path.stem)
            return (int(digits) if digits else -1, path.name)

        self.files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".pcd"), key=number)
        if not self.files:
            raise PointCloudLayoutError(f"{folder}: empty folder (no .pcd files)")
        for path in self.files:
            self._check_header(path)

    @staticmethod
    def _check_header(path: Path) -> None:
        with open(path, "rb") as f:
            head = f.read(4096).decode("ascii", errors="replace")
        fields = next((line.split()[1:] for line in head.splitlines()
                       if line.split()[:1] in (["FIELDS"], ["COLUMNS"])), None)
        if fields is None:
            raise PointCloudLayoutError(f"{path}: not a PCD file (no FIELDS line in its header)")
        if "label" not in fields:
            raise PointCloudLayoutError(f"{path}: no 'label' field (FIELDS {' '.join(fields)}); mOSD clouds "
                                        f"carry per-point labels")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        cloud = read_points(path)
        if "label" not in cloud.fields or cloud.fields["label"].ndim != 1:
            raise PointCloudLayoutError(f"{path}: no scalar 'label' field")
        raw = cloud.fields["label"].astype(np.int64)
        undefined = (raw >= 10) & (raw <= 19)
        if undefined.any():
            raise PointCloudLayoutError(f"{path}: label {int(raw[undefined][0])} at point "
                                        f"{int(np.flatnonzero(undefined)[0])}: labels 10-19 have no meaning in "
                                        f"the mOSD README (0 invalid, 1-9 table, 20+ objects)")
        valid = cloud.valid
        raw = np.where(valid, raw, 0)
        labels = mosd_semantic(raw)
        instance = mosd_merge_parts(raw) if self.merge_parts else raw
        colors = cloud.fields.get("colors")
        features = (_features(colors.astype(np.float32) / 255.0, n=len(cloud)) if colors is not None
                    else _features(n=len(cloud)))
        return {"points": torch.from_numpy(cloud.points), "features": features,
                "labels": torch.from_numpy(labels), "instance": torch.from_numpy(instance),
                "valid": torch.from_numpy(valid), "width": cloud.width, "height": cloud.height, "id": path.stem}


# ---------------------------------------------------------------------------------------------- registry builders
# `mtp run` builds a "val" split whenever a recipe gives a root and the builder takes a split; these layouts have
# no validation split of their own, so the builders the registry names return None for it (no validation).
def mosd(root=None, split: str = "test", merge_parts: bool = False) -> MOSD | None:
    return None if split == "val" else MOSD(root, split, merge_parts=merge_parts)


def modelnet(root=None, split: str = "train", num_classes: int = 40, num_points: int | None = 1024,
             normals: bool = True, normalize: bool = True) -> ModelNet | None:
    if split == "val":
        return None
    return ModelNet(root, split, num_classes=num_classes, num_points=num_points, normals=normals, normalize=normalize)


def modelnet_h5(root=None, split: str = "train", num_points: int | None = 1024, normals: bool = False,
                normalize: bool = False) -> ModelNetH5 | None:
    return None if split == "val" else ModelNetH5(root, split, num_points=num_points, normals=normals,
                                                  normalize=normalize)


def s3dis(root=None, split: str = "train", test_area: int = 5, grid_size: float | None = None) -> S3DIS | None:
    return None if split == "val" else S3DIS(root, split, test_area=test_area, grid_size=grid_size)


def scannet(root=None, split: str = "train", num_classes: int = 20, normals: bool = True) -> ScanNet:
    return ScanNet(root, split, num_classes=num_classes, normals=normals)
