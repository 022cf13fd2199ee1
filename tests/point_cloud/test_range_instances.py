"""Range-image instance segmentation (pipelines/point_cloud/range_instances.py, backbones/range_unet.py) on small
synthetic organised clouds: a table plane seen by a pinhole camera, with boxes on it."""
import numpy as np
import pytest
import torch

from mtp.backbones.range_unet import RangeUNet
from mtp.pipelines.point_cloud import range_instances as ri

H, W = 32, 48
FOCAL = 400.0


def _scene(boxes=(), h=H, w=W, focal=FOCAL):
    """A pinhole camera (centre ((w - 1) / 2, (h - 1) / 2)) looking down at a table 1 m away along a tilted axis;
    ``boxes`` are (row0, row1, col0, col1, height m) image rectangles lifted towards the camera. Returns points
    [h*w, 3], the table plane (a, b, c, d) and instance ids [h, w] (-1 table, k for box k)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - (w - 1) / 2) / focal, (v - (h - 1) / 2) / focal, np.ones_like(u)], axis=-1)
    normal = np.array([0.0, -0.5, -1.0]) / np.linalg.norm([0.0, -0.5, -1.0])     # towards the camera
    d = 1.0                                                                       # camera 1 m above the table
    t = -d / (rays @ normal)
    grid = rays * t[..., None]
    instance = np.full((h, w), -1)
    for k, (r0, r1, c0, c1, height) in enumerate(boxes):
        # the box top: the plane shifted by ``height`` towards the camera
        t_top = -(d - height) / (rays[r0:r1, c0:c1] @ normal)
        grid[r0:r1, c0:c1] = rays[r0:r1, c0:c1] * t_top[..., None]
        instance[r0:r1, c0:c1] = k
    return grid.reshape(-1, 3), np.array([*normal, d]), instance


def test_features_plane_normals_and_height():
    points, plane, _ = _scene([(10, 20, 10, 20, 0.1)])
    points[0] = np.nan
    features, valid = ri.range_features(points, None, W, H, plane=plane)
    assert features.shape == (ri.IN_CHANNELS, H, W) and features.dtype == np.float32
    assert not valid[0, 0] and valid.sum() == H * W - 1
    assert (features[:, 0, 0] == 0).all()                                 # invalid pixel: every channel 0
    normals = features[3:6].transpose(1, 2, 0)
    inner = normals[3:8, 25:40]                                           # on the table, away from the box
    np.testing.assert_allclose(inner, np.broadcast_to(plane[:3], inner.shape), atol=1e-6)
    np.testing.assert_allclose(features[9, 3:8, 25:40], 0.0, atol=1e-5)   # table: height 0
    np.testing.assert_allclose(features[9, 12:18, 12:18], 1.0, atol=1e-5)  # box top: 0.1 m = 1 dm
    np.testing.assert_allclose(normals[12:18, 12:18], np.broadcast_to(plane[:3], (6, 6, 3)), atol=1e-6)


def test_dominant_plane_is_the_table_facing_the_camera():
    points, plane, _ = _scene([(10, 20, 10, 20, 0.1)])
    fitted = ri.dominant_plane(points, num_iterations=200)
    np.testing.assert_allclose(fitted, plane, atol=1e-6)


def test_boundary_targets_between_touching_instances():
    instance = np.full((6, 8), -1)
    instance[1:5, 1:4] = 0
    instance[1:5, 4:7] = 1
    instance[0, 0] = -2                                                   # invalid
    boundary = ri.boundary_targets(instance, radius=1)
    assert boundary[0, 0] == -1
    assert (boundary[1:5, 3:5] == 1).all()                                # both sides of the contact
    assert (boundary[1:5, [1, 2, 5, 6]] == 0).all() and (boundary[5] == 0).all()
    semantic, targets = ri.training_targets(np.where(instance.reshape(-1) >= 0, 1, 0),
                                            np.where(instance >= 0, 20 + 10 * instance, 1).reshape(-1),
                                            (instance > -2).reshape(-1), 8, 6)
    assert semantic[0, 0] == -1 and (semantic[1:5, 1:7] == 1).all() and semantic[5, 0] == 0
    assert (targets[1:5, 3:4] == 1).all()


def test_grouping_splits_at_a_boundary_and_joins_without_one():
    # two boxes of the same height side by side: no depth jump between them
    points, _, instance = _scene([(8, 24, 8, 24, 0.1), (8, 24, 24, 40, 0.1)])
    points[0] = np.nan
    objects = (instance >= 0).astype(float)
    no_boundary = np.zeros((H, W))
    semantic, ids = ri.group_instances(points, W, H, objects, no_boundary, min_points=20)
    assert sorted(np.unique(ids[ids >= 0])) == [0]                        # one object: nothing separates them
    boundary = np.zeros((H, W))
    boundary[8:24, 23:25] = 1.0
    semantic, ids = ri.group_instances(points, W, H, objects, boundary, min_points=20)
    ids = ids.reshape(H, W)
    assert (ids[8:24, 8:24] == 0).all() and (ids[8:24, 24:40] == 1).all()  # boundary pixels re-attached
    assert (semantic.reshape(H, W)[instance < 0].ravel()[1:] == 0).all()
    assert semantic[0] == -1 and ids[0, 0] == -1                          # invalid pixel: -1 on both outputs
    assert ((semantic.reshape(H, W) == 1) == (ids >= 0)).all()


def test_grouping_cuts_depth_jumps():
    # a tall box beside a low one, touching in the image: the 3D distance across the contact is > 1 cm
    points, _, instance = _scene([(8, 24, 8, 24, 0.2), (8, 24, 24, 40, 0.05)])
    semantic, ids = ri.group_instances(points, W, H, (instance >= 0).astype(float), np.zeros((H, W)),
                                       min_points=20)
    ids = ids.reshape(H, W)
    assert len(np.unique(ids[ids >= 0])) == 2 and ids[10, 10] != ids[10, 30]


def test_tiny_network_trains_and_loss_falls():
    torch.manual_seed(0)
    points, plane, instance = _scene([(8, 24, 8, 24, 0.1), (8, 24, 24, 40, 0.1)])
    raw = np.where(instance >= 0, 20 + 10 * instance, 1).reshape(-1)
    scan = ri.prepare_scan(points, None, (instance >= 0).astype(int).reshape(-1), raw, np.ones(H * W, bool),
                           W, H, plane=plane, scale=1)
    model = RangeUNet(ri.IN_CHANNELS, ri.OUT_CHANNELS, widths=(8, 16))
    losses = ri.train_model(model, [scan], steps=60, batch_size=2, lr=1e-2, crop=(H, W))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    p_object, p_boundary = ri.predict_probabilities(model, ri.range_features(points, None, W, H, plane=plane)[0],
                                                    scale=1)
    assert p_object.shape == (H, W) and p_boundary.shape == (H, W)


def test_bad_input_names_what_was_expected():
    points, plane, _ = _scene()
    with pytest.raises(ValueError, match="organised"):
        ri.range_features(points, None, None, None, plane=plane)
    with pytest.raises(ValueError, match=r"\[1536, 3\]"):
        ri.range_features(points[:-1], None, W, H, plane=plane)
    with pytest.raises(ValueError, match="probabilities"):
        ri.group_instances(points, W, H, np.zeros((H, W + 1)), np.zeros((H, W)))
    with pytest.raises(ValueError, match=r"\[B, 11, H, W\]"):
        RangeUNet(11, 3)(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        RangeUNet(11, 3)(torch.zeros(1, 11, 20, 16))


def test_registered_backbone_builds_and_keeps_the_grid():
    from mtp.registry import BACKBONES

    model = BACKBONES.get("range_unet").build().eval()
    assert "point_cloud_segmentation" in BACKBONES.get("range_unet").tasks
    with torch.no_grad():
        out = model(torch.zeros(1, ri.IN_CHANNELS, 24, 32))
    assert out.shape == (1, ri.OUT_CHANNELS, 24, 32)


class _HeightThreshold(torch.nn.Module):
    """A stand-in network: object where the height channel says > 5 cm, no boundary."""

    def forward(self, x):
        height = x[:, 9:10]
        return torch.cat([torch.zeros_like(height), 20 * (height - 0.5), torch.full_like(height, -10.0)], dim=1)


def test_unorganised_cloud_is_laid_back_on_the_grid():
    points, plane, instance = _scene([(200, 300, 250, 330, 0.1), (200, 300, 330, 420, 0.2)], h=480, w=640,
                                     focal=ri.KINECT_FOCAL)
    points[::7] = np.nan                                                  # holes, dropped from the list
    keep = np.flatnonzero(np.isfinite(points).all(axis=1))
    shuffled = np.random.default_rng(0).permutation(keep)
    grid, _, pixel = ri.organise(points[shuffled])
    np.testing.assert_array_equal(pixel, shuffled)
    np.testing.assert_allclose(grid[keep], points[keep])
    assert np.isnan(grid[::7]).all()
    model = _HeightThreshold()
    semantic, ids = ri.segment(model, points, None, 640, 480, plane=plane, min_points=20)
    assert len(np.unique(ids[ids >= 0])) == 2                             # the two boxes, cut at the depth jump
    semantic_list, ids_list = ri.segment(model, points[shuffled], None, len(shuffled), 1, plane=plane,
                                         min_points=20)
    np.testing.assert_array_equal(semantic_list, semantic[shuffled])
    pairs = set(zip(ids_list.tolist(), ids[shuffled].tolist()))           # the same partition, renumbered
    assert len(pairs) == len(set(ids_list.tolist())) == len(set(ids[shuffled].tolist()))
