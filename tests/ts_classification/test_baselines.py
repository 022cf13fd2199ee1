"""InceptionTime and TST classification baselines: shapes, padding invariance, structure, a short real fit."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtp.backbones.inception_time import InceptionTime, MaskedBatchNorm1d, odd_kernel_sizes
from mtp.backbones.tst import TST

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = [pytest.param(InceptionTime, {}, id="inception_time"),
          pytest.param(TST, {"dropout": 0.0}, id="tst")]


def _padded_batch(series: list[torch.Tensor], length: int, garbage: bool = True):
    """Stack (C, T_i) series zero-padded (or garbage-padded: the mask must hide it) to `length`, with the mask."""
    x = torch.randn(len(series), series[0].shape[0], length) if garbage else torch.zeros(len(series),
                                                                                         series[0].shape[0], length)
    mask = torch.zeros(len(series), length, dtype=torch.bool)
    for row, s in enumerate(series):
        x[row, :, :s.shape[1]] = s
        mask[row, :s.shape[1]] = True
    return x, mask


@pytest.mark.parametrize("model_cls, hyper", MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(model_cls, hyper, channels):
    torch.manual_seed(0)
    model = model_cls(channels, 24, 5, **hyper)
    x = torch.randn(4, channels, 24)
    assert model(x).shape == (4, 5)
    assert model(x, torch.ones(4, 24, dtype=torch.bool)).shape == (4, 5)
    assert model.eval()(x[:, :, :17]).shape == (4, 5)


@pytest.mark.parametrize("model_cls, hyper", MODELS)
def test_padding_invariance_eval(model_cls, hyper):
    """Each series' logits in a padded variable-length batch equal those of the series alone, unpadded."""
    torch.manual_seed(0)
    model = model_cls(3, 32, 4, **hyper).eval()
    series = [torch.randn(3, t) for t in (9, 20, 32)]
    with torch.no_grad():
        alone = torch.cat([model(s[None]) for s in series])
        for length in (32, 45):                                       # TST drops padding past seq_length
            x, mask = _padded_batch(series, length)
            torch.testing.assert_close(model(x, mask), alone, rtol=1e-5, atol=1e-5)
        # the check can fail: without the mask, the padding changes the short series' logits
        x, _ = _padded_batch(series, 32, garbage=False)
        assert not torch.allclose(model(x)[0], alone[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("model_cls, hyper", MODELS)
def test_padding_invariance_train_statistics(model_cls, hyper):
    """In training, BatchNorm statistics come from real steps only: padding leaves outputs and running stats."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 20)
    outputs, stats = [], []
    for padded in (False, True):
        torch.manual_seed(1)
        model = model_cls(3, 32, 4, **hyper).train()
        if padded:
            xp, mask = _padded_batch(list(x), 32)
            outputs.append(model(xp, mask))
        else:
            outputs.append(model(x))
        stats.append(torch.cat([m.running_var for m in model.modules() if isinstance(m, MaskedBatchNorm1d)]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats[1], stats[0], rtol=1e-5, atol=1e-6)


def test_masked_batchnorm_matches_batchnorm_on_real_steps():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 11)
    mask = torch.rand(3, 11) > 0.3
    ours, ref = MaskedBatchNorm1d(5), torch.nn.BatchNorm1d(5)
    real = x.permute(0, 2, 1)[mask]                                   # (N, C) real steps only
    torch.testing.assert_close(ours(x, mask).permute(0, 2, 1)[mask], ref(real), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == 1


def test_tst_length_limit():
    assert TST.fixed_length and not InceptionTime.fixed_length
    model = TST(2, 16, 3).eval()
    with pytest.raises(ValueError, match=r"input length 20 exceeds the seq_length 16"):
        model(torch.randn(1, 2, 20))
    mask = torch.ones(1, 20, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"20.*16"):
        model(torch.randn(1, 2, 20), mask)
    # only padding past seq_length: trimmed, same logits as the series alone
    x = torch.randn(1, 2, 12)
    mask[:, 12:] = False
    with torch.no_grad():
        torch.testing.assert_close(model(F.pad(x, (0, 8)), mask), model(x), rtol=1e-5, atol=1e-5)


def test_tst_attention_goes_through_kernel(monkeypatch):
    import mtp.backbones.tst as tst
    calls = []

    def spy(q, k, v, **kwargs):
        calls.append(kwargs["mask"])
        return torch.zeros_like(v)

    monkeypatch.setattr(tst, "attention", spy)
    model = TST(2, 8, 3, num_layers=2).eval()
    model(torch.randn(2, 2, 8), torch.tensor([[True] * 8, [True] * 5 + [False] * 3]))
    assert len(calls) == 2 and calls[0].shape == (2, 1, 1, 8) and calls[0].dtype == torch.bool


def test_inception_kernel_sizes():
    assert odd_kernel_sizes(40) == [39, 19, 9]
    assert odd_kernel_sizes(41) == [41, 19, 9]


@pytest.mark.parametrize("channels, hyper", [(3, {}), (1, {}), (6, {"use_residual": False, "depth": 4}),
                                             (4, {"nb_filters": 8, "bottleneck_size": 16, "kernel_size": 20})])
def test_inception_time_parameter_count(channels, hyper):
    """Count from the architecture: bias-free convolutions, BatchNorm (2 per channel), Linear head."""
    cfg = dict(nb_filters=32, depth=6, kernel_size=40, bottleneck_size=32, use_residual=True, use_bottleneck=True)
    cfg.update(hyper)
    f, b, classes = cfg["nb_filters"], cfg["bottleneck_size"], 5
    kernel_sum = sum(odd_kernel_sizes(cfg["kernel_size"]))           # 39 + 19 + 9 = 67 by default
    width = 4 * f

    def module(c_in):
        bottleneck = cfg["use_bottleneck"] and c_in > 1
        branch_in = b if bottleneck else c_in
        return (c_in * b if bottleneck else 0) + branch_in * f * kernel_sum + c_in * f + 2 * width

    expected = sum(module(channels if d == 0 else width) for d in range(cfg["depth"]))
    if cfg["use_residual"]:
        expected += sum((channels if d == 2 else width) * width + 2 * width
                        for d in range(cfg["depth"]) if d % 3 == 2)
    expected += width * classes + classes
    model = InceptionTime(channels, 100, classes, **hyper)
    assert sum(p.numel() for p in model.parameters()) == expected
    if channels == 3 and not hyper:
        assert expected == 472_261                                    # the default network, 3 channels, 5 classes


def test_tst_parameter_count():
    c, length, classes, d, ff, layers = 6, 100, 4, 64, 256, 3
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    expected = (c * d + d) + length * d + layers * per_layer + (length * d * classes + classes)
    assert sum(p.numel() for p in TST(c, length, classes).parameters()) == expected


@pytest.fixture(scope="module")
def basic_motions(data_dir):
    from aeon.datasets import load_from_ts_file
    x, y = load_from_ts_file(str(data_dir / "tsc" / "multivariate" / "BasicMotions_TRAIN.ts"))
    _, labels = np.unique(y, return_inverse=True)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(labels)


@pytest.mark.parametrize("model_cls, hyper, steps", [(InceptionTime, {}, 20), (TST, {}, 20)],
                         ids=["inception_time", "tst"])
def test_overfits_basic_motions(basic_motions, model_cls, hyper, steps):
    """A few Adam steps on BasicMotions TRAIN (40 series, 6 channels, 100 steps, 4 classes) fit it."""
    x, y = basic_motions
    torch.manual_seed(0)
    model = model_cls(x.shape[1], x.shape[2], 4, **hyper)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    halves = torch.randperm(len(x)).view(2, -1)                       # the file is sorted by class: shuffle
    for step in range(steps):
        idx = halves[step % 2]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.95, accuracy


def test_max_pool3_equals_max_pool1d():
    from mtp.backbones.inception_time import max_pool3

    x = torch.randn(3, 5, 17)
    x[0, 0, 4:7] = float("-inf")
    assert torch.equal(max_pool3(x), F.max_pool1d(x, 3, stride=1, padding=1))
