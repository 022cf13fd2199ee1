"""The backbone-free mOSD baseline (dominant plane + DBSCAN, mtp.pipelines.point_cloud.geometric)."""
import numpy as np
import pytest

from mtp.pipelines.point_cloud.metrics import ConfusionMatrix, instance_scores

pytest.importorskip("open3d")
from mtp.pipelines.point_cloud.geometric import plane_and_clusters  # noqa: E402


def _grid(a0, a1, b0, b1, step):
    a, b = np.meshgrid(np.arange(a0, a1 + 1e-9, step), np.arange(b0, b1 + 1e-9, step), indexing="ij")
    return a.reshape(-1), b.reshape(-1)


def _box(x0, y0, z0, size, step):
    """The top and four sides of an axis-aligned box [x0, x0+size] x [y0, y0+size] x [z0, z0+size]."""
    x1, y1, z1 = x0 + size, y0 + size, z0 + size
    faces = []
    a, b = _grid(x0, x1, y0, y1, step)
    faces.append(np.stack([a, b, np.full_like(a, z1)], 1))                      # top
    for x in (x0, x1):
        a, b = _grid(y0, y1, z0, z1 - step, step)
        faces.append(np.stack([np.full_like(a, x), a, b], 1))
    for y in (y0, y1):
        a, b = _grid(x0 + step, x1 - step, z0, z1 - step, step)
        faces.append(np.stack([a, np.full_like(a, y), b], 1))
    return np.concatenate(faces)


def test_synthetic_plane_and_two_boxes():
    """A 1 m table at z = 0 (4 mm grid) and two 10 cm boxes 20 cm apart whose visible surfaces start 2 cm above
    it (beyond the 1 cm plane threshold), plus NaN rows: exactly two objects, each found whole."""
    step = 0.004
    a, b = _grid(-0.5, 0.5, -0.5, 0.5, step)
    rng = np.random.default_rng(0)
    table = np.stack([a, b, rng.normal(0, 0.001, a.shape)], 1)                 # 1 mm depth noise
    box_a = _box(-0.2, -0.05, 0.02, 0.1, step)
    box_b = _box(0.1, -0.05, 0.02, 0.1, step)
    nan = np.full((50, 3), np.nan)
    points = np.concatenate([table, box_a, nan, box_b]).astype(np.float32)
    reference = np.concatenate([np.full(len(table), 1), np.full(len(box_a), 20), np.zeros(50, int),
                                np.full(len(box_b), 30)])
    order = rng.permutation(len(points))                                       # file order must not matter
    points, reference = points[order], reference[order]

    semantic, instance = plane_and_clusters(points, seed=0)
    invalid = reference == 0
    assert (semantic[invalid] == -1).all() and (instance[invalid] == -1).all()
    assert (semantic[reference == 1] == 0).all() and (semantic[reference >= 20] == 1).all()
    assert sorted(np.unique(instance).tolist()) == [-1, 0, 1]
    scores = instance_scores(instance, reference, ignore_reference=[0, 1])
    assert scores["reference"] == scores["predicted"] == 2
    assert scores["matched_iou"] == 1.0 and scores["true_positives"] == 2
    assert scores["over_segmented"] == scores["under_segmented"] == 0


def test_too_few_points_and_bad_shape():
    semantic, instance = plane_and_clusters(np.array([[0, 0, 0], [np.nan, 0, 0]], np.float32))
    assert semantic.tolist() == [0, -1] and instance.tolist() == [-1, -1]
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        plane_and_clusters(np.zeros((4, 2), np.float32))


@pytest.fixture(scope="module")
def mosd_scan(data_dir):
    from mtp.datasets.point_cloud.layouts import MOSD

    root = data_dir / "pointcloud" / "mOSD"
    if not (root / "test" / "test0.pcd").is_file():
        pytest.skip(f"shared test data missing: {root}/test/test0.pcd")
    data = MOSD(root, "test")
    return data[[p.stem for p in data.files].index("test0")]       # two boxes on the table


def test_real_mosd_scan(mosd_scan):
    points = mosd_scan["points"].numpy()
    valid = mosd_scan["valid"].numpy()
    labels, raw = mosd_scan["labels"].numpy(), mosd_scan["instance"].numpy()
    semantic, instance = plane_and_clusters(points, seed=0)
    assert semantic.shape == instance.shape == (len(points),)
    # NaN points: -1 on both outputs.
    assert (~valid).any() and (semantic[~valid] == -1).all() and (instance[~valid] == -1).all()
    assert (semantic[valid] >= 0).all()
    # Clusters are the objects: semantic 1 exactly on clustered points, ids 0..K-1.
    assert ((semantic == 1) == (instance >= 0)).all()
    k = int(instance.max()) + 1
    assert sorted(np.unique(instance[instance >= 0]).tolist()) == list(range(k))
    # Table vs object per point.
    matrix = ConfusionMatrix(2, ignore_index=-1).update(np.maximum(semantic, 0), labels)
    assert matrix.iou[0] > 0.9 and matrix.iou[1] > 0.9
    # Two separated boxes: two objects, each matched well.
    scores = instance_scores(instance, raw, valid=valid, ignore_reference=range(10))
    assert scores["reference"] == 2 and scores["predicted"] == 2 and scores["matched_iou"] > 0.9
    # Deterministic with the seed.
    again = plane_and_clusters(points, seed=0)
    assert (again[0] == semantic).all() and (again[1] == instance).all()
