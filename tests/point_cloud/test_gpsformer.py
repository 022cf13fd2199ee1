import math

import pytest
import torch
import torch.nn.functional as F

from mtp.backbones.gpsformer import P_MAX, P_MIN, GPSFormerCls, LSFBranch

pytestmark = pytest.mark.usefixtures("one_thread")

# Parameter counts of this re-implementation (the paper reports 2.36M and 0.68M; see the module docstring)
STANDARD_PARAMS = {15: 1_631_320, 40: 1_637_745}
ELITE_PARAMS = {15: 584_888}
# Scaled-down sampling for speed (widths, hence parameter shapes, are the real variants')
SMALL = dict(num_points=(64, 32, 16), k=8, nsamples=(4, 8, 8))


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _cloud(b=2, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------------ shapes, size
@pytest.mark.parametrize("build", [GPSFormerCls, GPSFormerCls.elite], ids=["standard", "elite"])
@pytest.mark.parametrize("in_channels", [0, 3])
def test_output_shapes(build, in_channels):
    torch.manual_seed(0)
    model = build(num_classes=7, in_channels=in_channels, **SMALL).eval()
    xyz = _cloud()
    feats = torch.randn(2, 128, in_channels) if in_channels else None
    with torch.no_grad():
        out = model(xyz, feats)
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_default_config_full_size_forward():
    model = GPSFormerCls().eval()
    with torch.no_grad():
        out = model(_cloud(b=1, n=1024))
    assert out.shape == (1, 15)
    assert [s.num_points for s in model.stages] == [512, 256, 128]


@pytest.mark.parametrize("num_classes", sorted(STANDARD_PARAMS))
def test_parameter_count_standard(num_classes):
    n = _count(GPSFormerCls(num_classes=num_classes))
    print(f"GPSFormerCls(num_classes={num_classes}): {n:,} parameters (paper: 2.36M)")
    assert n == STANDARD_PARAMS[num_classes]


def test_parameter_count_elite():
    n = _count(GPSFormerCls.elite(num_classes=15))
    print(f"GPSFormerCls.elite(num_classes=15): {n:,} parameters (paper: 0.68M)")
    assert n == ELITE_PARAMS[15]
    assert n < _count(GPSFormerCls(num_classes=15)) / 2


# ------------------------------------------------------------------------------------------------ padding
def test_padded_batch_matches_each_cloud():
    """Eval mode: a padded batch (garbage, and a NaN point, beyond lengths) gives each cloud's own logits."""
    torch.manual_seed(0)
    model = GPSFormerCls.elite(num_classes=5, in_channels=2, **SMALL).eval()
    a, b = _cloud(b=1, n=128, seed=1), _cloud(b=1, n=100, seed=2)
    fa, fb = torch.randn(1, 128, 2), torch.randn(1, 100, 2)
    pad = torch.full((1, 28, 3), 5.0)
    pad[0, 3] = float("nan")
    xyz = torch.cat([a, torch.cat([b, pad], 1)])
    feats = torch.cat([fa, torch.cat([fb, torch.full((1, 28, 2), 9.0)], 1)])
    with torch.no_grad():
        batched = model(xyz, feats, lengths=torch.tensor([128, 100]))
        single = torch.cat([model(a, fa), model(b, fb)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_padding_stays_out_of_batchnorm_training_statistics():
    torch.manual_seed(0)
    model = GPSFormerCls.elite(num_classes=3, dropout=0.0, **SMALL).train()
    xyz = _cloud(b=2, n=128)
    xyz[1, 100:] = 50.0                                   # far-away padding would skew the statistics
    model(xyz, lengths=torch.tensor([128, 100]))
    ref = GPSFormerCls.elite(num_classes=3, dropout=0.0, **SMALL).train()
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k},
                        strict=False)
    for m in ref.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    clean = xyz.clone()
    clean[1, 100:] = float("nan")                        # invalid by coordinates instead of by lengths
    ref(clean)
    buffers = dict(ref.named_buffers())
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, buffers[name], msg=name)


# ------------------------------------------------------------------------------------------------ exponent p
def test_exponent_init_bound_and_gradient():
    torch.manual_seed(0)
    model = GPSFormerCls.elite(num_classes=3, **SMALL).train()
    branches = [m for m in model.modules() if isinstance(m, LSFBranch)]
    assert len(branches) == 9                             # 3 stages x 3 scales
    for branch in branches:
        assert math.isclose(branch.exponent.item(), 1.0, rel_tol=1e-6)
    loss = F.cross_entropy(model(_cloud(b=4, n=128)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    grads = torch.stack([b.exponent_logit.grad for b in branches])
    assert torch.isfinite(grads).all() and (grads != 0).any()
    with torch.no_grad():
        branches[0].exponent_logit.fill_(50.0)
        branches[1].exponent_logit.fill_(-50.0)
    assert P_MIN <= branches[1].exponent.item() < branches[0].exponent.item() <= P_MAX


def test_high_order_term_finite_at_zero_difference():
    """All-equal features make every f_j - f_i zero, where |u|^p has no derivative for p < 1."""
    torch.manual_seed(0)
    branch = LSFBranch(4, 8, 0.5, 4).train()
    with torch.no_grad():
        branch.exponent_logit.fill_(-3.0)                 # p close to P_MIN < 1
    xyz = _cloud(b=1, n=32)
    f = torch.ones(1, 32, 4, requires_grad=True)
    out = branch(xyz, f, xyz[:, :8], f[:, :8])
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(f.grad).all()
    assert torch.isfinite(branch.exponent_logit.grad)


def test_gradient_reaches_input_coordinates():
    """Sampling and grouping indices carry no gradient, the coordinates fed to the layers do."""
    torch.manual_seed(0)
    model = GPSFormerCls.elite(num_classes=3, **SMALL)
    xyz = _cloud().requires_grad_()
    model(xyz).sum().backward()
    assert torch.isfinite(xyz.grad).all() and (xyz.grad != 0).any()


# ------------------------------------------------------------------------------------------------ overfit
def _sphere_and_cube(n_per_class, points, g):
    sphere = F.normalize(torch.randn(n_per_class, points, 3, generator=g), dim=-1) * 0.8
    cube = torch.rand(n_per_class, points, 3, generator=g) * 2 - 1
    face = torch.randint(0, 3, (n_per_class, points), generator=g)
    side = torch.randint(0, 2, (n_per_class, points), generator=g).float() * 2 - 1
    cube.scatter_(2, face.unsqueeze(-1), side.unsqueeze(-1))  # project each point onto a face
    cube = cube * 0.6
    xyz = torch.cat([sphere, cube])
    labels = torch.cat([torch.zeros(n_per_class), torch.ones(n_per_class)]).long()
    return xyz, labels


def test_overfits_sphere_vs_cube():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xyz, labels = _sphere_and_cube(4, 256, g)
    model = GPSFormerCls.elite(num_classes=2, num_points=(32, 16, 8), k=8, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        logits = model(xyz)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        opt.step()
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    assert accuracy == 1.0, f"training accuracy {accuracy} after 60 steps (last loss {loss.item():.4f})"
    # 60 fast-moving steps leave BatchNorm's running averages behind the weights: re-estimate them on the
    # training set (cumulative average of one pass), then eval mode must classify it too
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(xyz)
        accuracy = (model.eval()(xyz).argmax(-1) == labels).float().mean().item()
    assert accuracy == 1.0, f"eval-mode accuracy {accuracy} on the training set"


# ------------------------------------------------------------------------------------------------ bad input
def test_wrong_last_dimension_raises():
    model = GPSFormerCls.elite(num_classes=3, **SMALL)
    with pytest.raises(ValueError, match=r"xyz must be \[B, N, 3\], got \(2, 128, 4\)"):
        model(torch.rand(2, 128, 4))


def test_too_few_points_raises():
    model = GPSFormerCls.elite(num_classes=3, **SMALL)
    with pytest.raises(ValueError, match=r"N=40 points, fewer than .*num_points\[0\]=64"):
        model(torch.rand(2, 40, 3))


def test_wrong_features_raise():
    model = GPSFormerCls.elite(num_classes=3, in_channels=3, **SMALL)
    with pytest.raises(ValueError, match=r"features must be \[B, N, 3\] \(in_channels\), got \(2, 128, 2\)"):
        model(torch.rand(2, 128, 3), torch.rand(2, 128, 2))
    with pytest.raises(ValueError, match=r"features must be \[B, N, 3\] \(in_channels\), got None"):
        model(torch.rand(2, 128, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_points=(32, 64, 16)), r"num_points must be positive and non-increasing .*got \[32, 64, 16\]"),
    (dict(widths=(32, 64)), r"widths and num_points need one entry per stage"),
    (dict(num_points=(64, 32, 16), k=40), r"k=40 must be >= 1 and <= .*\[64, 32\]"),
    (dict(heads=5), r"heads=5 must divide every GPM width \[32, 32, 64\]"),
    (dict(radii=(0.1, 0.2), nsamples=(8,)), r"radii and nsamples need one entry per scale"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPSFormerCls.elite(**kwargs)
