"""Backbone-free object instance segmentation of a tabletop cloud: dominant-plane removal, then Euclidean
clustering of what is left (open3d's ``segment_plane`` RANSAC and ``cluster_dbscan``).

This is the geometric baseline of the mOSD object segmentation task, reported beside the learned model
(``benchmarks/mosd_geometric_baseline.py``). It needs no weights and no training. Its known failure modes are the
ones it is built to show: objects that touch or are stacked fall into one cluster (under-segmentation), an
object split by an occluder falls into several (over-segmentation), and object bottoms within
``distance_threshold`` of the table are taken as table.

``plane_and_clusters(points, ...)`` -> (semantic [N], instance [N]), both int64, in the input's point order:

- semantic: 1 (object) on every point of an object cluster; 0 (table / background) on every other finite point:
  the plane's inliers, DBSCAN noise and clusters smaller than ``min_cluster_points``; -1 on points with a NaN or
  infinite coordinate (the holes of an organised Kinect cloud), which never reach open3d.
  So ``semantic == 1`` exactly where ``instance >= 0``.
- instance: -1 on table, background and invalid points; objects 0..K-1, numbered by the lowest input index of
  their points (a stable order, independent of DBSCAN's own numbering).

Default parameters, set a priori from the sensor and the scene scale (metres; mOSD's clouds are Kinect/Xtion
640 x 480 frames of a table 0.5-1.7 m from the camera), not tuned on test scans:

- ``distance_threshold`` 0.01 m: the Kinect's depth noise is about 1.5 mm at 1 m growing with the square of
  the distance (about 4 mm at 1.7 m), with disparity quantisation steps of a few mm at that range; 1 cm keeps
  the far table in the plane while cutting off only the lowest centimetre of the objects.
- ``ransac_n`` 3 (a plane from three points), ``num_iterations`` 1000: with the table at least ~40 % of the
  valid points, a three-point sample is all inliers with probability >= 0.064, so 1000 samples all miss with
  probability < 1e-28. All ``num_iterations`` samples are drawn (open3d's adaptive early stop is switched off with
  ``probability=1.0``): measured with open3d 0.20, the early stop made the same seed give one of two planes
  from run to run (its stopping point is raced between threads), while the full count gives one.
- ``eps`` 0.01 m: adjacent pixels are z / 525 apart (about 2 mm at 1 m, 3.2 mm at 1.7 m); 1 cm bridges a few
  missing pixels and a depth quantisation step on a slanted surface, yet separates objects more than 1 cm apart.
- ``min_points`` 10: a point is a DBSCAN core point with >= 10 neighbours within ``eps``; a surface patch of
  radius 1 cm holds about 30 points at 1.7 m and 80 at 1 m, while Kinect "flying pixels" at depth edges are
  isolated and become noise.
- ``min_cluster_points`` 100: a cluster smaller than a ~2 x 2 cm patch at 1 m (about 100 points) is table
  residue or edge noise, not an object; it is relabelled background.
- ``seed`` 0: RANSAC draws its samples from open3d's global generator, seeded here through
  ``o3d.utility.random.seed`` (open3d >= 0.16; ``None`` leaves the generator as it is). With the early stop off,
  one seed gave identical outputs run after run (checked with ``OMP_NUM_THREADS=1``); open3d's RANSAC loop is
  OpenMP-parallel, so with several threads the draws could be shared out differently between runs. DBSCAN
  labels are renumbered in input order, so its own numbering does not matter.
"""
from __future__ import annotations

import numpy as np

TABLE, OBJECT, INVALID = 0, 1, -1


def plane_and_clusters(points, *, distance_threshold: float = 0.01, ransac_n: int = 3, num_iterations: int = 1000,
                       eps: float = 0.01, min_points: int = 10, min_cluster_points: int = 100,
                       seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dominant plane = table, DBSCAN clusters of the rest = objects (module docstring).

    ``points``: [N, 3] coordinates (NaN / inf allowed: those points get -1 on both outputs). Returns
    (semantic [N] int64: 0 table/background, 1 object, -1 invalid; instance [N] int64: -1 or object 0..K-1).
    """
    import open3d as o3d

    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {points.shape}")
    if distance_threshold <= 0 or eps <= 0:
        raise ValueError(f"distance_threshold and eps must be > 0, got {distance_threshold} and {eps}")
    if ransac_n < 3 or num_iterations < 1 or min_points < 1:
        raise ValueError(f"need ransac_n >= 3, num_iterations >= 1, min_points >= 1; got {ransac_n}, "
                         f"{num_iterations}, {min_points}")
    n = len(points)
    semantic = np.full(n, INVALID, dtype=np.int64)
    instance = np.full(n, -1, dtype=np.int64)
    valid = np.isfinite(points).all(axis=1)
    index = np.flatnonzero(valid)
    semantic[index] = TABLE
    if len(index) < ransac_n:                  # too few points for a plane: nothing to segment
        return semantic, instance

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[index].astype(np.float64)))
    if seed is not None:
        o3d.utility.random.seed(int(seed))
    _, inliers = cloud.segment_plane(distance_threshold=float(distance_threshold), ransac_n=int(ransac_n),
                                     num_iterations=int(num_iterations), probability=1.0)
    off_plane = np.ones(len(index), dtype=bool)
    off_plane[np.asarray(inliers, dtype=np.int64)] = False
    rest = index[off_plane]                    # input indices of the off-plane points, ascending
    if len(rest) == 0:
        return semantic, instance

    rest_cloud = cloud.select_by_index(np.flatnonzero(off_plane).tolist())
    clusters = np.asarray(rest_cloud.cluster_dbscan(eps=float(eps), min_points=int(min_points)), dtype=np.int64)
    if clusters.size == 0 or clusters.max() < 0:
        return semantic, instance
    sizes = np.bincount(clusters[clusters >= 0])
    keep = np.flatnonzero(sizes >= max(int(min_cluster_points), 1))
    if len(keep) == 0:
        return semantic, instance
    # Renumber the kept clusters by their first point in input order (``rest`` is ascending).
    first = np.array([np.flatnonzero(clusters == c)[0] for c in keep])
    new_id = np.full(int(clusters.max()) + 1, -1, dtype=np.int64)
    new_id[keep[np.argsort(first, kind="stable")]] = np.arange(len(keep))
    ids = np.where(clusters >= 0, new_id[np.maximum(clusters, 0)], -1)
    instance[rest] = ids
    semantic[rest[ids >= 0]] = OBJECT
    return semantic, instance
