"""DLinear, PatchTST, Autoformer and the pytorch-forecasting adapter on real ETTh1 windows."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from mtp.backbones import itransformer as itr
from mtp.backbones.autoformer import AutoCorrelation, Autoformer
from mtp.backbones.dlinear import DLinear, MovingAverage
from mtp.backbones.patchtst import PatchTST
from mtp.datasets.forecasting import make_loader, make_splits

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def etth1(data_dir):
    return make_splits("ETTh1", root=data_dir / "ett", seq_len=96, pred_len=24, label_len=48)


@pytest.fixture(scope="module")
def batch(etth1):
    torch.manual_seed(0)
    return next(iter(make_loader(etth1.train, batch_size=16, shuffle=True)))


def _train_steps(model, batch, steps=12, lr=1e-3, **inputs):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    target = batch["y"][:, -24:]
    losses = []
    for _ in range(steps):
        out = model(batch["x"], **inputs)
        assert out.shape == target.shape
        loss = F.mse_loss(out, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------- DLinear

def test_moving_average_matches_edge_padded_mean(batch):
    x = batch["x"][:2]
    ours = MovingAverage(25)(x)
    padded = torch.cat([x[:, :1].expand(-1, 12, -1), x, x[:, -1:].expand(-1, 12, -1)], dim=1)
    expected = torch.stack([padded[:, t:t + 25].mean(dim=1) for t in range(96)], dim=1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="moving_avg=24"):
        MovingAverage(24)


def test_dlinear_names_and_individual_equivalence(batch):
    shared = DLinear(seq_len=96, pred_len=24, enc_in=7)
    assert list(shared.state_dict()) == ["Linear_Seasonal.weight", "Linear_Seasonal.bias",
                                         "Linear_Trend.weight", "Linear_Trend.bias"]
    torch.testing.assert_close(shared.Linear_Seasonal.weight, torch.full((24, 96), 1 / 96))
    individual = DLinear(seq_len=96, pred_len=24, enc_in=7, individual=True)
    assert "Linear_Trend.6.weight" in individual.state_dict()
    # Per-channel maps that all equal the shared one must reproduce the shared model.
    with torch.no_grad():
        pairs = ((individual.Linear_Seasonal, shared.Linear_Seasonal), (individual.Linear_Trend, shared.Linear_Trend))
        for layers, ref in pairs:
            for layer in layers:
                layer.load_state_dict(ref.state_dict())
    torch.testing.assert_close(individual(batch["x"]), shared(batch["x"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="enc_in=7"):
        individual(batch["x"][..., :3])


@pytest.mark.parametrize("individual", [False, True])
def test_dlinear_trains(batch, individual):
    torch.manual_seed(0)
    losses = _train_steps(DLinear(seq_len=96, pred_len=24, enc_in=7, individual=individual), batch, lr=5e-3)
    assert losses[-1] < 0.9 * losses[0]


# ---------------------------------------------------------------- PatchTST

def test_patchtst_structure_and_kernel_attention(batch, monkeypatch):
    model = PatchTST(seq_len=96, pred_len=24, d_model=32, n_heads=4, e_layers=2, d_ff=64).eval()
    assert model.patch_num == 12 and model.head.linear.weight.shape == (24, 32 * 12)
    keys = model.state_dict()
    assert keys["patch_embedding.position_embedding.pe"].shape == (1, 5000, 32)
    official_names = {"encoder.norm.1.weight", "encoder.norm.1.running_mean", "patch_embedding.value_embedding.weight"}
    assert official_names <= set(keys)
    calls, dispatch = [], itr.attention

    def counting_attention(q, k, v, **kwargs):
        calls.append(tuple(q.shape))
        return dispatch(q, k, v, **kwargs)

    monkeypatch.setattr(itr, "attention", counting_attention)
    with torch.no_grad():
        out = model(batch["x"])
        # Instance normalisation: shifting a channel shifts its forecast by the same amount.
        shift = torch.linspace(-3, 3, 7)
        torch.testing.assert_close(model(batch["x"] + shift), out + shift, rtol=1e-4, atol=1e-4)
    assert calls[:2] == [(16 * 7, 4, 12, 8)] * 2


def test_patchtst_trains(batch):
    torch.manual_seed(0)
    losses = _train_steps(PatchTST(seq_len=96, pred_len=24, d_model=32, n_heads=4, e_layers=1, d_ff=64), batch)
    assert losses[-1] < 0.9 * losses[0]


# ---------------------------------------------------------------- Autoformer

def _naive_autocorrelation(q, k, v, factor, training):
    """Loop-per-delay version of the mechanism: correlation via FFT, then rolled values."""
    batch, length = q.shape[:2]
    corr = torch.fft.irfft(torch.fft.rfft(q.permute(0, 2, 3, 1), dim=-1)
                           * torch.conj(torch.fft.rfft(k.permute(0, 2, 3, 1), dim=-1)), dim=-1)
    values = v.permute(0, 2, 3, 1)
    mean_corr = corr.mean(dim=2).mean(dim=1)
    top_k = int(factor * math.log(length))
    out = torch.zeros_like(values)
    if training:
        delays = torch.topk(mean_corr.mean(0), top_k).indices
        weights = torch.softmax(torch.stack([mean_corr[:, d] for d in delays], dim=-1), dim=-1)
        for i, delay in enumerate(delays):
            out = out + torch.roll(values, -int(delay), -1) * weights[:, i, None, None, None]
    else:
        weights, delays = torch.topk(mean_corr, top_k, dim=-1)
        weights = torch.softmax(weights, dim=-1)
        for b in range(batch):
            for i in range(top_k):
                out[b] += torch.roll(values[b], -int(delays[b, i]), -1) * weights[b, i]
    return out.permute(0, 3, 1, 2)


@pytest.mark.parametrize("training", [True, False])
def test_autocorrelation_matches_loop_reference(training):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 96, 2, 8, generator=generator) for _ in range(3))
    module = AutoCorrelation(factor=3).train(training)
    out, corr = module(q, k, v)
    torch.testing.assert_close(out, _naive_autocorrelation(q, k, v, 3, training), rtol=1e-5, atol=1e-5)
    assert corr.shape == (3, 96, 2, 8)


def test_autoformer_decoder_marks_and_errors(batch):
    model = Autoformer(seq_len=96, label_len=48, pred_len=24, enc_in=7, d_model=16, n_heads=2, d_ff=32).eval()
    with torch.no_grad():
        full_span = model(batch["x"], batch["x_mark"], batch["y_mark"])            # label_len + pred_len marks
        future_only = model(batch["x"], batch["x_mark"], batch["y_mark"][:, -24:])
        without_marks = model(batch["x"])
    torch.testing.assert_close(future_only, full_span)
    assert full_span.shape == (16, 24, 7) and not torch.allclose(without_marks, full_span)
    assert "enc_embedding.position_embedding.pe" in model.state_dict()
    assert model.decoder.layers[0].projection.weight.shape == (7, 16, 3)
    with pytest.raises(ValueError, match="both x_mark and y_mark"):
        model(batch["x"], batch["x_mark"])
    with pytest.raises(ValueError, match="y_mark: expected 24 or 72 steps"):
        model(batch["x"], batch["x_mark"], batch["y_mark"][:, :10])
    with pytest.raises(ValueError, match="c_out=1 must equal enc_in=7"):
        Autoformer(enc_in=7, c_out=1)
    with pytest.raises(ValueError, match="embed='fixed'"):
        Autoformer(embed="fixed")


def test_autoformer_trains(batch):
    torch.manual_seed(0)
    model = Autoformer(seq_len=96, label_len=48, pred_len=24, enc_in=7, d_model=16, n_heads=2, d_ff=32, factor=3)
    losses = _train_steps(model, batch, x_mark=batch["x_mark"], y_mark=batch["y_mark"])
    assert losses[-1] < 0.9 * losses[0]


# ---------------------------------------------------------------- pytorch-forecasting adapter

@pytest.fixture(scope="module")
def pf_data(etth1):
    from mtp.datasets.forecasting import LongFormatData, wide_to_long
    long = wide_to_long(etth1.train.data.numpy(), etth1.columns)
    return {relative: LongFormatData(long, series_col="series", time_col="time_idx", target="value", seq_len=96,
                                     pred_len=24, target_normalizer=None, add_relative_time_idx=relative)
            for relative in (False, True)}


@pytest.mark.parametrize("kind", ["nhits", "tft"])
def test_pf_adapter_feeds_what_the_pf_loader_feeds(pf_data, kind):
    from mtp.backbones.pf_adapter import PFForecaster
    warnings.filterwarnings("ignore", module="lightning")
    torch.manual_seed(0)
    adapter = PFForecaster(kind, seq_len=96, pred_len=24, use_norm=False, hidden_size=16).eval()
    pf_batch, _ = next(iter(pf_data[kind == "tft"].val_dataloader(batch_size=8)))
    windows = pf_batch["encoder_target"][:, :, None]                    # 8 univariate windows [8, 96, 1]
    ours = adapter.pf_inputs(windows)
    for key in ("encoder_cont", "encoder_target", "encoder_lengths", "decoder_lengths", "target_scale"):
        torch.testing.assert_close(ours[key], pf_batch[key], msg=key)
    known = [i for i, name in enumerate(adapter.reals) if name != "value"]
    torch.testing.assert_close(ours["decoder_cont"][..., known], pf_batch["decoder_cont"][..., known])
    with torch.no_grad():
        reference = adapter.model.to_prediction(adapter.model(pf_batch))    # pf's own batch (true future inside)
        torch.testing.assert_close(adapter(windows), reference[:, :, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["nhits", "tft"])
def test_pf_adapter_trains_on_multichannel_windows(batch, kind):
    from mtp.backbones.pf_adapter import PFForecaster
    warnings.filterwarnings("ignore", module="lightning")
    torch.manual_seed(0)
    adapter = PFForecaster(kind, seq_len=96, pred_len=24, hidden_size=16)
    losses = _train_steps(adapter, batch, steps=10, lr=3e-3)
    assert losses[-1] < 0.9 * losses[0]
    with pytest.raises(ValueError, match=r"x: expected \[B, 96, N\]"):
        adapter(batch["x"][:, :50])


def test_pf_adapter_rejects_unknown_model():
    from mtp.backbones.pf_adapter import PFForecaster
    with pytest.raises(ValueError, match="model='deepar'"):
        PFForecaster("deepar")


def test_nhits_from_long_format_dataset_trains(pf_data):
    from pytorch_forecasting import NHiTS
    from pytorch_forecasting.metrics import MAE
    warnings.filterwarnings("ignore", module="lightning")
    torch.manual_seed(0)
    data = pf_data[False]
    model = NHiTS.from_dataset(data.training, hidden_size=16, loss=MAE())
    x, (y, _) = next(iter(data.train_dataloader(batch_size=32)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = model.loss(model(x)["prediction"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
