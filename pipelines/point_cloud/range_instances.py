"""Learned object instance segmentation of organised tabletop clouds (mOSD) on the range-image grid: a 2D U-Net
(``mtp.backbones.range_unet.RangeUNet``) predicts, per pixel, table-vs-object and an object-boundary map; objects
are the connected components of object pixels once the predicted boundaries and 3D depth jumps are cut.

An organised Kinect cloud is a 640 x 480 image whose pixels carry a 3D point (NaN where the sensor saw nothing),
so a 2D convolutional network sees each point's image neighbours for free (SqueezeSeg, RangeNet++). What the
geometric baseline (``geometric.plane_and_clusters``) cannot do is split objects that touch (stacked or
side-by-side boxes) without a depth jump between them; the boundary map, learned from where the reference
instances meet, is what does it here.

Features (``range_features``), 11 channels per pixel at full resolution, then every other row and column
(``SCALE`` 2: 320 x 240, four times fewer pixels for the CPU; an object of 100 points keeps 25):
- x, y, z (camera frame, metres: 0.5-1.7 m for mOSD, already of order 1);
- the surface normal from the pixel's neighbours ``NORMAL_STEP`` = 2 pixels away on each side (a 5-pixel
  baseline, 1-1.6 cm on mOSD, so the Kinect's 1.5-4 mm depth noise tilts it by less than ~15 degrees), turned to
  face the camera, 0 where a neighbour is invalid;
- r, g, b in [0, 1] minus 0.5;
- the height above the dominant plane x 10 (decimetres, so an object's 0-3 dm is of order 1), clipped to
  [-2, 5] so that far clutter below or above the table cannot dominate: the plane is the baseline's RANSAC
  (``dominant_plane``: same 1 cm threshold, 1000 iterations, seed 0), oriented so that the camera is above it;
  it makes table-vs-object nearly a threshold, as the baseline shows (mIoU 0.98);
- a validity channel (1 valid, 0 invalid; every other channel is 0 on invalid pixels).

Targets (``training_targets``), from the reference labels the scorer uses (``MOSD(merge_parts=False)``: each
disjoint part of an object its own instance, table parts 1-9 the table): semantic 0 table / 1 object / -1
invalid or unlabelled; boundary 1 on an object pixel with a pixel of another object instance within
``BOUNDARY_RADIUS`` = 2 pixels (full resolution: a band of about 4 pixels across the contact, 2 pixels at 320 x
240, so that it survives the subsampling on both sides), 0 on other valid pixels, -1 on invalid ones. Where two
objects meet with no depth jump this is the only cue that splits them; where there is a jump it is redundant
with the 3D cut.

Grouping (``group_instances``), at full resolution on the network's outputs upsampled bilinearly:
- object pixels: P(object) > 0.5; core pixels: object pixels with P(boundary) <= 0.5 (the two decisions the
  losses were trained for, no threshold tuning);
- components: connected components of core pixels over 4-neighbour edges whose two 3D points are less than
  ``edge_distance`` = 0.01 m apart (the baseline's DBSCAN ``eps``, with its justification: adjacent pixels are
  2-3.2 mm apart on mOSD, so 1 cm bridges noise on a slanted surface and cuts depth jumps between objects);
- components of fewer than ``min_points`` = 100 pixels (the baseline's ``min_cluster_points``: a 2 x 2 cm patch
  at 1 m) are not objects by themselves;
- the leftover object pixels (boundaries, small components) join the kept component with the nearest 3D point
  when it is within ``attach_distance`` = 0.03 m (a boundary band is about 4 pixels, at most 1.3 cm at 1.7 m,
  so 3 cm reaches across it and across a few missing pixels, yet not to the next object across a real gap);
- what is still left is grouped the same way once more (an object the network marked all boundary, e.g. a thin
  one, still becomes an object), and components under ``min_points`` are background.
Outputs as ``plane_and_clusters``: semantic 1 exactly where instance >= 0, 0 on other valid points, -1 on
invalid points (non-finite coordinates); objects numbered 0..K-1 by their lowest input index.

Unorganised clouds (``organise``): one mOSD test scan (test43) is stored as a list of its 170986 valid points
(WIDTH 170986, HEIGHT 1) instead of the 640 x 480 grid. The grid is rebuilt by projecting each point with the
Kinect's default intrinsics (focal 525 pixels, centre 319.5, 239.5), which the organised learn clouds follow to
1e-4 pixel; on test43 every point lands on its own integer pixel, so the grid is recovered exactly. Each point
then takes its pixel's output (a point off the image would be background).

Training (``train_model``): cross-entropy on the semantic logits and binary cross-entropy on the boundary logit
(``BOUNDARY_POS_WEIGHT`` = 5: boundary pixels are a few per cent of the valid ones, and a missed boundary merges
two objects while a thick one only delays pixels to the attach step), both ignoring invalid pixels; Adam,
cosine decay, random ``CROP`` 128 x 160 windows of the 240 x 320 grids (about a quarter of a scene: 4 crops
cost one scene's step, and crops make 20 scenes into many different views), random horizontal flips (x and
the normal's x change sign) and colour jitter (brightness x 0.8-1.2, per-channel shift +-0.05), as there are
only 20 learn scans. ``STEPS`` = 3000 steps of ``BATCH_SIZE`` = 4 crops, ``LR`` 2e-3, ``WEIGHT_DECAY`` 1e-4,
``SEED`` 0 and ``WIDTHS`` 16-128 are the fit of both benchmarks/mosd_instances.py and
recipes/point_cloud/range_unet_mosd_instances.yaml (``scan_arrays``/``prepare_item`` read a ``MOSD`` item for it).

Scoring: the mOSD protocol of ``mtp.pipelines.point_cloud.metrics`` (``score_mosd_scan``, ``summarise_mosd_scans``,
``mosd_group_of``; benchmarks/mosd_geometric_baseline.py's docstring defines the figures). A backbone with
``input_format = "organised_grid"`` selects this module in the ``point_cloud_segmentation`` pipeline.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

SCALE = 2
NORMAL_STEP = 2
BOUNDARY_RADIUS = 2
BOUNDARY_POS_WEIGHT = 5.0
CROP = (128, 160)
IN_CHANNELS = 11
OUT_CHANNELS = 3          # table logit, object logit, boundary logit
INVALID = -1
# The fit of benchmarks/mosd_instances.py and recipes/point_cloud/range_unet_mosd_instances.yaml (module docstring)
WIDTHS = (16, 32, 64, 128)
STEPS = 3000
BATCH_SIZE = 4
LR = 2e-3
WEIGHT_DECAY = 1e-4
SEED = 0
KINECT_SIZE = (640, 480)            # width, height
KINECT_FOCAL = 525.0                # pixels; mOSD's organised learn clouds fit it to 1e-4 pixel
KINECT_CENTRE = (319.5, 239.5)


def organised_grid(points, width, height) -> np.ndarray:
    """[H*W, 3] points of an organised cloud -> [H, W, 3] float64 (ValueError naming what was expected)."""
    points = np.asarray(points)
    if width is None or height is None or int(width) < 2 or int(height) < 2:
        raise ValueError(f"expected an organised cloud (width and height >= 2, e.g. mOSD's 640 x 480), got "
                         f"width={width}, height={height}")
    width, height = int(width), int(height)
    if points.ndim != 2 or points.shape != (width * height, 3):
        raise ValueError(f"expected points [height * width, 3] = [{width * height}, 3] for an organised "
                         f"{width} x {height} cloud, got shape {points.shape}")
    return points.reshape(height, width, 3).astype(np.float64)


def dominant_plane(points, *, distance_threshold: float = 0.01, num_iterations: int = 1000,
                   seed: int = 0) -> np.ndarray:
    """The RANSAC table plane of ``geometric.plane_and_clusters`` (same parameters and seeding) as (a, b, c, d)
    with a unit normal and d > 0, i.e. a x + b y + c z + d is the signed height, positive on the camera's side."""
    import open3d as o3d

    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    finite = points[np.isfinite(points).all(axis=1)]
    if len(finite) < 3:
        raise ValueError(f"need at least 3 finite points for a plane, got {len(finite)}")
    o3d.utility.random.seed(int(seed))
    model, _ = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(finite)).segment_plane(
        distance_threshold=float(distance_threshold), ransac_n=3, num_iterations=int(num_iterations),
        probability=1.0)
    plane = np.asarray(model, dtype=np.float64)
    plane /= np.linalg.norm(plane[:3])
    return -plane if plane[3] < 0 else plane


def grid_normals(grid: np.ndarray, step: int = NORMAL_STEP) -> np.ndarray:
    """[H, W, 3] points (NaN invalid) -> [H, W, 3] unit normals facing the camera (origin), from the neighbours
    ``step`` pixels away along the row and the column; 0 where one of them (or the pixel) is invalid."""
    h, w, _ = grid.shape
    normals = np.zeros_like(grid)
    s = int(step)
    if h <= 2 * s or w <= 2 * s:
        return normals
    du = grid[s:-s, 2 * s:] - grid[s:-s, :-2 * s]
    dv = grid[2 * s:, s:-s] - grid[:-2 * s, s:-s]
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    ok = np.isfinite(norm[..., 0]) & (norm[..., 0] > 0) & np.isfinite(grid[s:-s, s:-s]).all(axis=-1)
    n = np.where(ok[..., None], n / np.where(ok[..., None], norm, 1.0), 0.0)
    facing = (n * np.nan_to_num(grid[s:-s, s:-s])).sum(axis=-1, keepdims=True) > 0
    normals[s:-s, s:-s] = np.where(facing, -n, n)
    return normals


def range_features(points, colors, width, height, *, plane=None) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution input channels (module docstring): ([11, H, W] float32, valid [H, W] bool).
    ``colors`` [H*W, 3] in [0, 1] or None (then 0.5 grey); ``plane`` (a, b, c, d) or None (``dominant_plane``)."""
    grid = organised_grid(points, width, height)
    h, w, _ = grid.shape
    valid = np.isfinite(grid).all(axis=-1)
    if colors is None:
        colors = np.full((h * w, 3), 0.5)
    colors = np.asarray(colors, dtype=np.float64)
    if colors.shape != (h * w, 3):
        raise ValueError(f"expected colors [height * width, 3] = [{h * w}, 3], got shape {colors.shape}")
    if plane is None:      # a cloud of < 3 points has no plane; any will do, every pixel's features are 0
        plane = dominant_plane(grid.reshape(-1, 3)) if valid.sum() >= 3 else np.array([0.0, 0.0, -1.0, 1.0])
    plane = np.asarray(plane, dtype=np.float64)
    if plane.shape != (4,):
        raise ValueError(f"expected plane (a, b, c, d), got shape {plane.shape}")
    xyz = np.where(valid[..., None], grid, 0.0)
    height_dm = np.clip((xyz @ plane[:3] + plane[3]) * 10.0, -2.0, 5.0)
    channels = np.concatenate([xyz, grid_normals(grid), colors.reshape(h, w, 3) - 0.5, height_dm[..., None],
                               np.ones((h, w, 1))], axis=-1)
    channels = np.where(valid[..., None], channels, 0.0)
    return np.ascontiguousarray(channels.transpose(2, 0, 1), dtype=np.float32), valid


def boundary_targets(instance: np.ndarray, radius: int = BOUNDARY_RADIUS) -> np.ndarray:
    """[H, W] object instance ids (>= 0 object, -1 table / background, < -1 invalid) -> [H, W] int64: 1 on an
    object pixel with a pixel of another object within ``radius`` (Chebyshev), 0 on other valid pixels, -1 on
    invalid ones (ids < -1)."""
    instance = np.asarray(instance, dtype=np.int64)
    if instance.ndim != 2:
        raise ValueError(f"expected instance ids as an [H, W] grid, got shape {instance.shape}")
    h, w = instance.shape
    r = int(radius)
    padded = np.pad(instance, r, constant_values=-1)
    obj = instance >= 0
    boundary = np.zeros((h, w), dtype=bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            other = padded[r + dy:r + dy + h, r + dx:r + dx + w]
            boundary |= obj & (other >= 0) & (other != instance)
    return np.where(instance < -1, INVALID, boundary.astype(np.int64))


def training_targets(labels, raw_instance, valid, width, height) -> tuple[np.ndarray, np.ndarray]:
    """mOSD per-point semantic labels (0 table, 1 object, -1 invalid) and raw part ids (README: 1-9 table, 20+
    object parts, merge_parts=False) -> full-resolution (semantic [H, W], boundary [H, W]) int64 targets."""
    h, w = int(height), int(width)
    labels = np.asarray(labels, dtype=np.int64).reshape(h, w)
    raw = np.asarray(raw_instance, dtype=np.int64).reshape(h, w)
    valid = np.asarray(valid, dtype=bool).reshape(h, w)
    semantic = np.where(valid, labels, INVALID)
    ids = np.where(semantic == 1, raw, np.where(semantic == 0, -1, -2))
    return semantic, boundary_targets(ids)


def _components(mask: np.ndarray, grid: np.ndarray, edge_distance: float) -> np.ndarray:
    """Connected components of ``mask`` pixels over 4-neighbour edges shorter than ``edge_distance`` in 3D:
    [H, W] int64 component ids, -1 outside the mask."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h, w = mask.shape
    index = np.arange(h * w).reshape(h, w)
    rows, cols = [], []
    for a, b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                 ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        close = np.linalg.norm(grid[a] - grid[b], axis=-1) < edge_distance    # NaN compares False
        keep = mask[a] & mask[b] & close
        rows.append(index[a][keep])
        cols.append(index[b][keep])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(h * w, h * w))
    _, component = connected_components(graph, directed=False)
    return np.where(mask, component.reshape(h, w), -1)


def _kept(component: np.ndarray, min_points: int) -> np.ndarray:
    """Mask of the pixels in components of at least ``min_points`` pixels."""
    ids = component[component >= 0]
    if ids.size == 0:
        return np.zeros(component.shape, dtype=bool)
    sizes = np.bincount(ids)
    return (component >= 0) & (sizes[np.maximum(component, 0)] >= min_points)


def group_instances(points, width, height, object_prob, boundary_prob, *, edge_distance: float = 0.01,
                    min_points: int = 100, attach_distance: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Objects from per-pixel P(object) and P(boundary) [H, W] (module docstring) -> (semantic [N], instance [N])
    int64 in input order, as ``plane_and_clusters``: semantic 0 / 1 / -1 invalid, instance -1 or 0..K-1."""
    from scipy.spatial import cKDTree

    grid = organised_grid(points, width, height)
    h, w, _ = grid.shape
    object_prob, boundary_prob = np.asarray(object_prob), np.asarray(boundary_prob)
    if object_prob.shape != (h, w) or boundary_prob.shape != (h, w):
        raise ValueError(f"expected object and boundary probabilities [height, width] = [{h}, {w}], got "
                         f"{object_prob.shape} and {boundary_prob.shape}")
    valid = np.isfinite(grid).all(axis=-1)
    objects = valid & (object_prob > 0.5)
    core = objects & (boundary_prob <= 0.5)

    component = _components(core, grid, edge_distance)
    kept = _kept(component, min_points)
    label = np.where(kept, component, -1)
    left = objects & ~kept
    if kept.any() and left.any():
        distance, nearest = cKDTree(grid[kept]).query(grid[left], distance_upper_bound=attach_distance)
        found = np.isfinite(distance)
        attached = np.full(len(distance), -1, dtype=np.int64)
        attached[found] = label[kept][nearest[found]]
        label[left] = attached
    rest = objects & (label < 0)
    if rest.any():
        second = _components(rest, grid, edge_distance)
        second_kept = _kept(second, min_points)
        label = np.where(second_kept, second + h * w, label)      # ids disjoint from the first pass

    flat = label.reshape(-1)
    assigned = flat >= 0
    instance = np.full(h * w, -1, dtype=np.int64)
    ids, first, position = np.unique(flat[assigned], return_index=True, return_inverse=True)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(ids))      # numbered by their first input index
    instance[assigned] = rank[position]
    semantic = np.where(valid.reshape(-1), (instance >= 0).astype(np.int64), INVALID)
    return semantic, instance


def subsample(grid: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Every ``scale``-th row and column of [..., H, W]."""
    return np.ascontiguousarray(grid[..., ::scale, ::scale])


def predict_probabilities(model: nn.Module, features: np.ndarray, scale: int = SCALE) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """Full-resolution features [C, H, W] -> (P(object), P(boundary)) [H, W], the network run at 1/``scale``
    and its logits upsampled bilinearly back to H x W."""
    model.eval()
    h, w = features.shape[1:]
    x = torch.from_numpy(subsample(features, scale))[None]
    sh, sw = x.shape[2:]
    # a U-Net needs sides that are multiples of 2 ** poolings: pad with invalid (all-0) pixels, crop the logits
    multiple = 2 ** (len(getattr(model, "widths", (0,))) - 1)
    x = nn.functional.pad(x, (0, -sw % multiple, 0, -sh % multiple))
    parameter = next(model.parameters(), None)
    if parameter is not None:
        x = x.to(parameter.device, parameter.dtype)
    with torch.no_grad():
        logits = model(x)[..., :sh, :sw].float().cpu()
        logits = nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0]
    p_object = torch.softmax(logits[:2], dim=0)[1].numpy()
    p_boundary = torch.sigmoid(logits[2]).numpy()
    return p_object, p_boundary


def organise(points, colors=None, *, width: int = KINECT_SIZE[0], height: int = KINECT_SIZE[1],
             focal: float = KINECT_FOCAL, centre: tuple[float, float] = KINECT_CENTRE):
    """An unorganised cloud in the camera frame -> (grid points [H*W, 3] (NaN where no point lands), grid colours
    [H*W, 3] or None, pixel [N] int64: each point's grid index, -1 for a non-finite point or one off the image),
    by the pinhole projection u = focal x / z + cx, v = focal y / z + cy rounded; of points sharing a pixel the
    nearest to the camera is the one kept in the grid (module docstring)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"expected points [N, 3], got shape {points.shape}")
    finite = np.isfinite(points).all(axis=1) & (np.nan_to_num(points[:, 2]) > 0)
    pixel = np.full(len(points), -1, dtype=np.int64)
    safe = np.where(finite[:, None], points, 1.0)
    u = np.rint(focal * safe[:, 0] / safe[:, 2] + centre[0])
    v = np.rint(focal * safe[:, 1] / safe[:, 2] + centre[1])
    inside = finite & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    pixel[inside] = (v[inside] * width + u[inside]).astype(np.int64)
    order = np.flatnonzero(inside)[np.argsort(-points[inside, 2], kind="stable")]   # far first: near ones win
    grid = np.full((width * height, 3), np.nan)
    grid[pixel[order]] = points[order]
    grid_colors = None
    if colors is not None:
        grid_colors = np.full((width * height, 3), 0.5)
        grid_colors[pixel[order]] = np.asarray(colors, dtype=np.float64)[order]
    return grid, grid_colors, pixel


def segment(model: nn.Module, points, colors, width, height, *, plane=None, scale: int = SCALE,
            **grouping) -> tuple[np.ndarray, np.ndarray]:
    """One cloud -> (semantic [N], instance [N]): features, network, grouping (module docstring). An organised
    cloud is used as it is; an unorganised one (``height`` None or 1) is first laid on mOSD's Kinect grid by
    ``organise`` and every point takes its pixel's labels (a point off the image: 0 / -1)."""
    if height is not None and int(height) > 1:
        features, _ = range_features(points, colors, width, height, plane=plane)
        p_object, p_boundary = predict_probabilities(model, features, scale)
        return group_instances(points, width, height, p_object, p_boundary, **grouping)
    grid, grid_colors, pixel = organise(points, colors)
    semantic, instance = segment(model, grid, grid_colors, *KINECT_SIZE, plane=plane, scale=scale, **grouping)
    finite = np.isfinite(np.asarray(points, dtype=np.float64)).all(axis=1)
    on_grid = pixel >= 0
    out_semantic = np.where(finite, 0, INVALID).astype(np.int64)
    out_instance = np.full(len(pixel), -1, dtype=np.int64)
    out_semantic[on_grid], out_instance[on_grid] = semantic[pixel[on_grid]], instance[pixel[on_grid]]
    return out_semantic, out_instance


def scan_arrays(item: dict) -> dict:
    """A ``MOSD`` item -> the numpy arrays ``prepare_scan``, ``segment`` and ``metrics.score_mosd_scan`` take: points, colors
    ([N, 3] in [0, 1]), labels, raw (part ids), valid, width, height."""
    return {"points": np.asarray(item["points"]), "colors": np.asarray(item["features"]),
            "labels": np.asarray(item["labels"]), "raw": np.asarray(item["instance"]),
            "valid": np.asarray(item["valid"]), "width": item["width"], "height": item["height"]}


def prepare_item(item: dict, scale: int = SCALE) -> dict:
    """``prepare_scan`` of a ``MOSD(merge_parts=False)`` item."""
    a = scan_arrays(item)
    return prepare_scan(a["points"], a["colors"], a["labels"], a["raw"], a["valid"], a["width"], a["height"],
                        scale=scale)


def prepare_scan(points, colors, labels, raw_instance, valid, width, height, *, plane=None,
                 scale: int = SCALE) -> dict:
    """One labelled scan -> training arrays at 1/``scale``: features [11, h, w] float32, semantic and boundary
    targets [h, w] int64 (-1 ignored)."""
    features, _ = range_features(points, colors, width, height, plane=plane)
    semantic, boundary = training_targets(labels, raw_instance, valid, width, height)
    return {"features": subsample(features, scale), "semantic": subsample(semantic, scale),
            "boundary": subsample(boundary, scale)}


def _augmented_batch(scans: list[dict], batch_size: int, crop: tuple[int, int], rng: np.random.Generator):
    xs, sems, bnds = [], [], []
    for _ in range(batch_size):
        scan = scans[rng.integers(len(scans))]
        _, h, w = scan["features"].shape
        ch, cw = min(crop[0], h), min(crop[1], w)
        y0, x0 = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        x = scan["features"][(slice(None),) + window].copy()
        sem, bnd = scan["semantic"][window].copy(), scan["boundary"][window].copy()
        if rng.random() < 0.5:                        # mirror: columns reversed, x and the normal's x negated
            x, sem, bnd = x[..., ::-1].copy(), sem[:, ::-1].copy(), bnd[:, ::-1].copy()
            x[[0, 3]] *= -1
        valid = x[10] > 0
        rgb = (x[6:9] + 0.5) * rng.uniform(0.8, 1.2) + rng.uniform(-0.05, 0.05, size=(3, 1, 1))
        x[6:9] = np.where(valid, np.clip(rgb, 0.0, 1.0) - 0.5, 0.0)
        xs.append(x)
        sems.append(sem)
        bnds.append(bnd)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(sems)), torch.from_numpy(np.stack(bnds))


def segmentation_loss(logits: torch.Tensor, semantic: torch.Tensor, boundary: torch.Tensor,
                      pos_weight: float = BOUNDARY_POS_WEIGHT) -> torch.Tensor:
    """Cross-entropy (table / object) + weighted binary cross-entropy (boundary), invalid (-1) pixels ignored."""
    loss = nn.functional.cross_entropy(logits[:, :2], semantic, ignore_index=INVALID)
    known = boundary >= 0
    if known.any():
        loss = loss + nn.functional.binary_cross_entropy_with_logits(
            logits[:, 2][known], boundary[known].float(), pos_weight=torch.tensor(pos_weight))
    return loss


def train_model(model: nn.Module, scans: list[dict], *, steps: int, batch_size: int = BATCH_SIZE, lr: float = LR,
                weight_decay: float = WEIGHT_DECAY, crop: tuple[int, int] = CROP, seed: int = SEED, log_every: int = 0,
                log=print) -> list[float]:
    """Train ``model`` on ``prepare_scan`` outputs (module docstring); returns the loss of every step."""
    if not scans:
        raise ValueError("train_model needs at least one prepared scan")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        x, sem, bnd = _augmented_batch(scans, batch_size, crop, rng)
        loss = segmentation_loss(model(x), sem, bnd)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = float(np.mean(losses[-log_every:]))
            log(f"step {step + 1}/{steps} loss {recent:.4f} ({time.perf_counter() - start:.0f} s)")
    return losses
