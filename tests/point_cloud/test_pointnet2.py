import math

import pytest
import torch
import torch.nn.functional as F

from mtp.backbones.pointnet2 import (PointNet2ClsMSG, PointNet2ClsSSG, PointNet2PartSegMSG, PointNet2PartSegSSG,
                                     PointNet2SemSegMSG, PointNet2SemSegSSG, PointNetFeaturePropagation,
                                     PointNetSetAbstraction, PointNetSetAbstractionMsg)
from mtp.registry import BACKBONES

pytestmark = pytest.mark.usefixtures("one_thread")

# Scaled-down sampling (channel widths, hence state dicts, are the full models')
SMALL = {
    PointNet2ClsSSG: dict(num_classes=5, npoints=(32, 8), nsamples=(8, 8)),
    PointNet2ClsMSG: dict(num_classes=5, npoints=(32, 8), nsamples=((4, 8, 8), (4, 8, 8))),
    PointNet2SemSegSSG: dict(num_classes=5, npoints=(64, 16, 8, 4), nsamples=(8, 8, 8, 4)),
    PointNet2SemSegMSG: dict(num_classes=5, npoints=(64, 16, 8, 4), nsamples=((4, 8),) * 4),
    PointNet2PartSegSSG: dict(num_classes=7, num_categories=3, npoints=(32, 8), nsamples=(8, 8)),
    PointNet2PartSegMSG: dict(num_classes=7, num_categories=3, npoints=(32, 8), nsamples=((4, 8, 8), (4, 8))),
}
SEG = (PointNet2SemSegSSG, PointNet2SemSegMSG, PointNet2PartSegSSG, PointNet2PartSegMSG)
PART = (PointNet2PartSegSSG, PointNet2PartSegMSG)


def _run(model, xyz, features=None, lengths=None, category=None):
    if isinstance(model, PART):
        return model(xyz, features, lengths, category=category)
    return model(xyz, features, lengths)


def _inputs(cls, b=2, n=256, in_channels=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(b, n, 3, generator=g) * 2 - 1
    feats = torch.randn(b, n, in_channels, generator=g) if in_channels else None
    category = torch.arange(b) % 3 if cls in PART else None
    return xyz, feats, category


# ------------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("cls", list(SMALL))
@pytest.mark.parametrize("in_channels", [0, 3])
def test_output_shapes(cls, in_channels):
    torch.manual_seed(0)
    model = cls(in_channels=in_channels, **SMALL[cls]).eval()
    xyz, feats, category = _inputs(cls, in_channels=in_channels)
    with torch.no_grad():
        out = _run(model, xyz, feats, category=category)
    k = SMALL[cls]["num_classes"]
    assert out.shape == ((2, 256, k) if cls in SEG else (2, k))
    assert torch.isfinite(out).all()


def test_layer_shapes():
    xyz, feats = torch.rand(2, 100, 3), torch.rand(2, 100, 4)
    sa = PointNetSetAbstraction(16, 0.3, 8, 3 + 4, [8, 12])
    new_xyz, new_f = sa(xyz, feats)
    assert new_xyz.shape == (2, 16, 3) and new_f.shape == (2, 16, 12)
    msg = PointNetSetAbstractionMsg(16, [0.2, 0.4], [4, 8], 4, [[8], [6, 10]])
    new_xyz, new_f = msg(xyz, feats)
    assert new_xyz.shape == (2, 16, 3) and new_f.shape == (2, 16, 18)
    ga = PointNetSetAbstraction(None, None, None, 3 + 12, [20], group_all=True)
    g_xyz, g_f = ga(new_xyz, torch.rand(2, 16, 12))
    assert g_xyz.shape == (2, 1, 3) and not g_xyz.any() and g_f.shape == (2, 1, 20)
    fp = PointNetFeaturePropagation(4 + 18, [16])
    assert fp(xyz, new_xyz, feats, new_f).shape == (2, 100, 16)


def test_bad_inputs():
    model = PointNet2ClsSSG(in_channels=3, **SMALL[PointNet2ClsSSG])
    with pytest.raises(ValueError, match="features"):
        model(torch.rand(2, 64, 3))
    with pytest.raises(ValueError, match="xyz"):
        model(torch.rand(2, 64, 4), torch.rand(2, 64, 3))
    part = PointNet2PartSegSSG(**SMALL[PointNet2PartSegSSG])
    with pytest.raises(ValueError, match="category"):
        part(torch.rand(2, 64, 3))


# ------------------------------------------------------------------------------------------------ state dicts
# The yanx27/Pointnet_Pointnet2_pytorch layout, written out from its model files' layer list.
def _conv_bn(prefix, c_in, mlp, conv_dims, convs="mlp_convs", bns="mlp_bns", part=None):
    """A shared MLP's keys: every conv (ModuleList `convs`), then every BatchNorm (`bns`), as registered.
    part="convs" / "bns" gives one half (MSG layers register all branches' convs before their BatchNorms)."""
    conv_keys, bn_keys = {}, {}
    for j, c_out in enumerate(mlp):
        conv_keys[f"{prefix}.{convs}.{j}.weight"] = (c_out, c_in) + (1,) * conv_dims
        conv_keys[f"{prefix}.{convs}.{j}.bias"] = (c_out,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            bn_keys[f"{prefix}.{bns}.{j}.{name}"] = (c_out,)
        bn_keys[f"{prefix}.{bns}.{j}.num_batches_tracked"] = ()
        c_in = c_out
    return {None: {**conv_keys, **bn_keys}, "convs": conv_keys, "bns": bn_keys}[part]


def _msg(prefix, c_in, mlps):
    keys = {}
    for part in ("convs", "bns"):
        for r, mlp in enumerate(mlps):
            keys.update(_conv_bn(prefix, c_in + 3, mlp, 2, f"conv_blocks.{r}", f"bn_blocks.{r}", part))
    return keys


def _bn(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,), f"{name}.running_var": (c,),
            f"{name}.num_batches_tracked": ()}


def _cls_head(classes):
    return {"fc1.weight": (512, 1024), "fc1.bias": (512,), **_bn("bn1", 512), "fc2.weight": (256, 512),
            "fc2.bias": (256,), **_bn("bn2", 256), "fc3.weight": (classes, 256), "fc3.bias": (classes,)}


def _seg_head(classes):
    return {"conv1.weight": (128, 128, 1), "conv1.bias": (128,), **_bn("bn1", 128),
            "conv2.weight": (classes, 128, 1), "conv2.bias": (classes,)}


def _expected_cls_ssg(classes, normals):
    return {**_conv_bn("sa1", 3 + 3 * normals, [64, 64, 128], 2), **_conv_bn("sa2", 131, [128, 128, 256], 2),
            **_conv_bn("sa3", 259, [256, 512, 1024], 2), **_cls_head(classes)}


def _expected_cls_msg(classes, normals):
    return {**_msg("sa1", 3 * normals, [[32, 32, 64], [64, 64, 128], [64, 96, 128]]),
            **_msg("sa2", 320, [[64, 64, 128], [128, 128, 256], [128, 128, 256]]),
            **_conv_bn("sa3", 643, [256, 512, 1024], 2), **_cls_head(classes)}


def _expected_semseg_ssg(classes):
    return {**_conv_bn("sa1", 12, [32, 32, 64], 2), **_conv_bn("sa2", 67, [64, 64, 128], 2),
            **_conv_bn("sa3", 131, [128, 128, 256], 2), **_conv_bn("sa4", 259, [256, 256, 512], 2),
            **_conv_bn("fp4", 768, [256, 256], 1), **_conv_bn("fp3", 384, [256, 256], 1),
            **_conv_bn("fp2", 320, [256, 128], 1), **_conv_bn("fp1", 128, [128, 128, 128], 1), **_seg_head(classes)}


def _expected_semseg_msg(classes):
    return {**_msg("sa1", 9, [[16, 16, 32], [32, 32, 64]]), **_msg("sa2", 96, [[64, 64, 128], [64, 96, 128]]),
            **_msg("sa3", 256, [[128, 196, 256], [128, 196, 256]]),
            **_msg("sa4", 512, [[256, 256, 512], [256, 384, 512]]),
            **_conv_bn("fp4", 1536, [256, 256], 1), **_conv_bn("fp3", 512, [256, 256], 1),
            **_conv_bn("fp2", 352, [256, 128], 1), **_conv_bn("fp1", 128, [128, 128, 128], 1), **_seg_head(classes)}


def _expected_partseg_ssg(classes, normals):
    add = 3 * normals
    return {**_conv_bn("sa1", 6 + add, [64, 64, 128], 2), **_conv_bn("sa2", 131, [128, 128, 256], 2),
            **_conv_bn("sa3", 259, [256, 512, 1024], 2), **_conv_bn("fp3", 1280, [256, 256], 1),
            **_conv_bn("fp2", 384, [256, 128], 1), **_conv_bn("fp1", 150 + add, [128, 128, 128], 1),
            **_seg_head(classes)}


def _expected_partseg_msg(classes, normals):
    add = 3 * normals
    return {**_msg("sa1", 3 + add, [[32, 32, 64], [64, 64, 128], [64, 96, 128]]),
            **_msg("sa2", 320, [[128, 128, 256], [128, 196, 256]]), **_conv_bn("sa3", 515, [256, 512, 1024], 2),
            **_conv_bn("fp3", 1536, [256, 256], 1), **_conv_bn("fp2", 576, [256, 128], 1),
            **_conv_bn("fp1", 150 + add, [128, 128], 1), **_seg_head(classes)}


CASES = [
    ("cls_ssg", lambda: PointNet2ClsSSG(40), _expected_cls_ssg(40, False), 79),
    ("cls_ssg_normals", lambda: PointNet2ClsSSG(40, in_channels=3), _expected_cls_ssg(40, True), 79),
    ("cls_msg", lambda: PointNet2ClsMSG(40), _expected_cls_msg(40, False), 163),
    ("cls_msg_normals", lambda: PointNet2ClsMSG(10, in_channels=3), _expected_cls_msg(10, True), 163),
    ("semseg_ssg", lambda: PointNet2SemSegSSG(13), _expected_semseg_ssg(13), 156),
    ("semseg_msg", lambda: PointNet2SemSegMSG(13), _expected_semseg_msg(13), 240),
    ("partseg_ssg", lambda: PointNet2PartSegSSG(50), _expected_partseg_ssg(50, False), 121),
    ("partseg_ssg_normals", lambda: PointNet2PartSegSSG(50, in_channels=3), _expected_partseg_ssg(50, True), 121),
    ("partseg_msg", lambda: PointNet2PartSegMSG(50), _expected_partseg_msg(50, False), 177),
    ("partseg_msg_normals", lambda: PointNet2PartSegMSG(50, in_channels=3), _expected_partseg_msg(50, True), 177),
]


@pytest.mark.parametrize("name,build,expected,count", CASES, ids=[c[0] for c in CASES])
def test_state_dict_is_yanx27_layout(name, build, expected, count):
    model = build()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == count
    assert list(got) == list(expected)            # same names, same order
    assert got == expected
    # a checkpoint with exactly these names and shapes loads strictly, and its values are used
    ckpt = {k: (torch.tensor(7) if s == () else torch.randn(s)) for k, s in expected.items()}
    model.load_state_dict(ckpt, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt[k])


def test_sampling_sizes_do_not_change_the_state_dict():
    small = PointNet2ClsSSG(40, **{k: v for k, v in SMALL[PointNet2ClsSSG].items() if k != "num_classes"})
    assert {k: v.shape for k, v in small.state_dict().items()} == \
        {k: v.shape for k, v in PointNet2ClsSSG(40).state_dict().items()}


def test_registered_backbones():
    cases = {"pointnet2_cls_ssg": (PointNet2ClsSSG, "point_cloud_classification"),
             "pointnet2_cls_msg": (PointNet2ClsMSG, "point_cloud_classification"),
             "pointnet2_semseg_ssg": (PointNet2SemSegSSG, "point_cloud_segmentation"),
             "pointnet2_semseg_msg": (PointNet2SemSegMSG, "point_cloud_segmentation"),
             "pointnet2_partseg_ssg": (PointNet2PartSegSSG, "point_cloud_segmentation"),
             "pointnet2_partseg_msg": (PointNet2PartSegMSG, "point_cloud_segmentation")}
    for name, (cls, task) in cases.items():
        spec = BACKBONES.get(name)
        assert task in spec.tasks and spec.family == "pointnet2"
        assert type(spec.build()) is cls


# ------------------------------------------------------------------------------------------------ kernels' conventions
def _line(n=8):
    """n points on the x axis at x = 0, 1, ..., n-1 (as [1, n, 3])."""
    xyz = torch.zeros(1, n, 3)
    xyz[0, :, 0] = torch.arange(n, dtype=torch.float32)
    return xyz


def test_ssg_grouping_follows_pointnet2_conventions():
    xyz = _line(8)
    feats = torch.arange(8, dtype=torch.float32).view(1, 8, 1) * 10
    sa = PointNetSetAbstraction(3, 1.5, 4, 3 + 1, [4])
    new_xyz, grouped, index, _ = sa.group(xyz, feats)
    # FPS from index 0: 0, then the farthest 7, then 3 and 4 tie at distance 3 -> the lower index, 3
    assert new_xyz[0, :, 0].tolist() == [0.0, 7.0, 3.0]
    # ball query: the first nsample in index order (strictly inside r), padded with the first found
    assert index[0].tolist() == [[0, 1, 0, 0], [6, 7, 6, 6], [2, 3, 4, 2]]
    # groups: [relative xyz, features]
    assert grouped.shape == (1, 3, 4, 4)
    assert grouped[0, 2, :, 0].tolist() == [-1.0, 0.0, 1.0, -1.0]
    assert grouped[0, 2, :, 3].tolist() == [20.0, 30.0, 40.0, 20.0]
    # index order, not nearness: around x=3 with r=3.5, the first two hits are 0 and 1
    sa_wide = PointNetSetAbstraction(3, 3.5, 2, 3, [4])
    assert sa_wide.group(xyz)[2][0, 2].tolist() == [0, 1]


def test_msg_grouping_puts_features_first():
    xyz = _line(8)
    feats = torch.arange(8, dtype=torch.float32).view(1, 8, 1) * 10
    msg = PointNetSetAbstractionMsg(3, [1.5, 2.5], [2, 4], 1, [[4], [4]])
    new_xyz, groups = msg.group(xyz, feats)
    assert new_xyz[0, :, 0].tolist() == [0.0, 7.0, 3.0]
    (g1, i1), (g2, i2) = groups
    assert i1[0].tolist() == [[0, 1], [6, 7], [2, 3]]
    assert i2[0].tolist() == [[0, 1, 2, 0], [5, 6, 7, 5], [1, 2, 3, 4]]
    assert g2[0, 2, :, 0].tolist() == [10.0, 20.0, 30.0, 40.0]      # features, then relative xyz
    assert g2[0, 2, :, 1].tolist() == [-2.0, -1.0, 0.0, 1.0]


def test_group_all_uses_absolute_xyz():
    xyz = torch.rand(2, 10, 3)
    ga = PointNetSetAbstraction(None, None, None, 3 + 2, [4], group_all=True)
    feats = torch.rand(2, 10, 2)
    new_xyz, grouped, index, _ = ga.group(xyz, feats)
    assert index is None and torch.equal(new_xyz, torch.zeros(2, 1, 3))
    assert torch.equal(grouped[:, 0], torch.cat([xyz, feats], -1))


def test_feature_propagation_interpolation():
    sparse = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [10, 0, 0]]])
    values = torch.tensor([[[0.0], [1.0], [3.0], [100.0]]])
    dense = torch.tensor([[[0.5, 0, 0], [1.0, 0, 0]]])
    out = PointNetFeaturePropagation.interpolate(dense, sparse, values)
    # x=0.5: neighbours 0, 1 (d^2 0.25) and 3 (d^2 6.25); the 4th point is not one of the 3 nearest
    w = torch.tensor([1 / (0.25 + 1e-8), 1 / (0.25 + 1e-8), 1 / (6.25 + 1e-8)])
    assert out[0, 0, 0].item() == pytest.approx((w * torch.tensor([0.0, 1, 3])).sum().item() / w.sum().item())
    assert out[0, 1, 0].item() == pytest.approx(1.0, abs=1e-6)      # on a sparse point: its value
    # a single sparse point is broadcast
    one = PointNetFeaturePropagation.interpolate(dense, sparse[:, :1], values[:, 1:2])
    assert torch.equal(one, torch.ones(1, 2, 1))
    # fewer than 3 sparse points: the nearest ones only
    two = PointNetFeaturePropagation.interpolate(dense, sparse[:, :2], values[:, :2])
    assert two[0, 0, 0].item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------ invariances
def test_group_all_is_permutation_invariant():
    torch.manual_seed(0)
    ga = PointNetSetAbstraction(None, None, None, 3 + 4, [16, 32], group_all=True).eval()
    xyz, feats = torch.rand(2, 50, 3), torch.rand(2, 50, 4)
    perm = torch.randperm(50)
    with torch.no_grad():
        a = ga(xyz, feats)[1]
        b = ga(xyz[:, perm], feats[:, perm])[1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_classifier_is_permutation_invariant_with_whole_balls_and_fixed_start():
    """FPS starts at index 0 and ball query keeps the first nsample in index order, so the logits depend on the
    point order in general. With point 0 kept first (same FPS start, so the same centroids in the same order)
    and every ball holding all points (nsample >= N), each group is the same set and the max hides its order."""
    torch.manual_seed(0)
    n = 64
    model = PointNet2ClsSSG(5, in_channels=3, npoints=(16, 4), radii=(10.0, 10.0), nsamples=(n, 16)).eval()
    xyz, feats = torch.rand(2, n, 3), torch.rand(2, n, 3)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(n - 1)])
    with torch.no_grad():
        a = model(xyz, feats)
        b = model(xyz[:, perm], feats[:, perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [PointNet2ClsMSG, PointNet2SemSegSSG, PointNet2PartSegSSG])
def test_eval_mode_is_deterministic(cls):
    torch.manual_seed(0)
    in_channels = 6 if cls is PointNet2SemSegSSG else 0
    model = cls(in_channels=in_channels, **SMALL[cls]).eval()
    xyz, feats, category = _inputs(cls, in_channels=in_channels, seed=1)
    with torch.no_grad():
        torch.manual_seed(1)
        a = _run(model, xyz, feats, category=category)
        torch.manual_seed(2)
        b = _run(model, xyz, feats, category=category)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ padded batches
def _padded(clouds, feats, n, pad):
    b = len(clouds)
    xyz = torch.full((b, n, 3), pad)
    f = torch.zeros(b, n, feats[0].shape[-1]) if feats[0] is not None else None
    for i, c in enumerate(clouds):
        xyz[i, :len(c)] = c
        if f is not None:
            f[i, :len(c)] = feats[i]
    return xyz, f, torch.tensor([len(c) for c in clouds])


@pytest.mark.parametrize("cls", list(SMALL))
@pytest.mark.parametrize("pad", [0.0, float("nan")])
def test_padded_batch_equals_each_cloud(cls, pad):
    torch.manual_seed(0)
    in_channels = 6 if cls in (PointNet2SemSegSSG, PointNet2SemSegMSG) else 3
    model = cls(in_channels=in_channels, **SMALL[cls]).eval()
    g = torch.Generator().manual_seed(3)
    sizes = (256, 180, 24)                             # the last has fewer points than the first npoint
    clouds = [torch.rand(s, 3, generator=g) for s in sizes]
    feats = [torch.randn(s, in_channels, generator=g) for s in sizes]
    category = torch.tensor([0, 2, 1]) if cls in PART else None
    xyz, f, lengths = _padded(clouds, feats, 256, pad)
    with torch.no_grad():
        batched = _run(model, xyz, f, lengths, category=category)
        assert torch.isfinite(batched).all()
        for i, (c, fi) in enumerate(zip(clouds, feats)):
            cat = category[i:i + 1] if category is not None else None
            single = _run(model, c[None], fi[None], category=cat)[0]
            if cls in SEG:
                torch.testing.assert_close(batched[i, :len(c)], single, rtol=1e-4, atol=1e-4)
                assert not batched[i, len(c):].any()        # padded points: zero logits
            else:
                torch.testing.assert_close(batched[i], single, rtol=1e-4, atol=1e-4)


def test_padding_stays_out_of_training_statistics():
    """Train mode: a batch padded with lengths gives what the unpadded batch gives (BatchNorm's statistics and
    running stats over real points only), for the dense per-point layers too."""
    torch.manual_seed(0)
    kw = dict(SMALL[PointNet2SemSegSSG], dropout=0.0)
    a, b = PointNet2SemSegSSG(**kw), PointNet2SemSegSSG(**kw)
    b.load_state_dict(a.state_dict())
    xyz, feats = torch.rand(2, 150, 3), torch.randn(2, 150, 6)
    pad_xyz = torch.cat([xyz, torch.full((2, 50, 3), 5.0)], 1)
    pad_feats = torch.cat([feats, torch.full((2, 50, 6), 9.0)], 1)
    out = a(xyz, feats)
    out_pad = b(pad_xyz, pad_feats, torch.tensor([150, 150]))
    torch.testing.assert_close(out_pad[:, :150], out, rtol=1e-4, atol=1e-4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(vb, va, rtol=1e-4, atol=1e-5, msg=k)


# ------------------------------------------------------------------------------------------------ training
def _spheres_and_cubes(n_each=4, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n_each, n, 3, generator=g)
    spheres = v / v.norm(dim=-1, keepdim=True)
    c = torch.rand(n_each, n, 3, generator=g) * 2 - 1                 # on a cube's surface: one coordinate +-1
    face = torch.randint(0, 3, (n_each, n), generator=g)
    sign = torch.randint(0, 2, (n_each, n), generator=g).float() * 2 - 1
    c.scatter_(2, face[..., None], sign[..., None])
    return torch.cat([spheres, c]) * 0.8, torch.tensor([0] * n_each + [1] * n_each)


def test_training_steps_reduce_classification_loss():
    torch.manual_seed(0)
    xyz, labels = _spheres_and_cubes()
    model = PointNet2ClsSSG(2, npoints=(16, 4), radii=(0.4, 0.8), nsamples=(8, 8), dropout=(0.0, 0.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = F.cross_entropy(model(xyz), labels).item()
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(model(xyz), labels)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(xyz), labels).item()
    assert math.isfinite(after) and after < 0.5 * before


def test_training_steps_reduce_part_segmentation_loss():
    torch.manual_seed(0)
    xyz, cats = _spheres_and_cubes(n_each=2)
    labels = (xyz[..., 2] > 0).long()                                  # upper / lower half
    model = PointNet2PartSegSSG(2, num_categories=2, npoints=(16, 4), radii=(0.4, 0.8), nsamples=(8, 8),
                                dropout=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn():
        return F.cross_entropy(model(xyz, category=cats).flatten(0, 1), labels.flatten())

    with torch.no_grad():
        before = loss_fn().item()
    for _ in range(10):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_fn().item()
    assert math.isfinite(after) and after < 0.7 * before
