"""Forecast metrics on a real ETTh1 test split, scored with a seasonal-naive forecast."""
import numpy as np
import pytest
import torch

from mtp.datasets.forecasting import make_loader, make_splits
from mtp.pipelines.forecasting import metrics as fm


@pytest.fixture(scope="module")
def etth1(data_dir):
    return make_splits("ETTh1", root=data_dir / "ett", seq_len=96, pred_len=96)


@pytest.fixture(scope="module")
def naive(etth1):
    """Repeat the last day of each look-back (season 24) over the horizon, for every test window."""
    batch = etth1.test.__getitems__(range(len(etth1.test)))
    pred = batch["x"][:, -24:].repeat(1, 4, 1)
    return pred.double().numpy(), batch["y"].double().numpy()


def test_normalised_metrics_match_numpy(naive):
    pred, true = naive
    assert pred.shape == (2785, 96, 7)
    assert fm.mse(pred, true) == pytest.approx(np.mean((pred - true) ** 2), rel=1e-12)
    assert fm.mae(pred, true) == pytest.approx(np.mean(np.abs(pred - true)), rel=1e-12)
    assert fm.rmse(pred, true) == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-12)
    # torch float32 input gives the same numbers (summed in float64).
    as_float32 = torch.from_numpy(pred).float(), torch.from_numpy(true).float()
    assert fm.mse(*as_float32) == pytest.approx(fm.mse(pred, true), rel=1e-6)
    # The naive forecast is a real baseline, worse than a perfect one and better than predicting noise.
    assert 0.1 < fm.mse(pred, true) < 5.0
    with pytest.raises(ValueError, match="pred shape"):
        fm.mse(pred[:, :48], true)


def test_original_unit_metrics(etth1, naive, data_dir):
    import pandas as pd
    etth1_raw = pd.read_csv(data_dir / "ett" / "ETTh1.csv")
    pred, true = naive
    pred_o, true_o = etth1.inverse_transform(pred), etth1.inverse_transform(true)
    assert fm.mae(pred_o, true_o) == pytest.approx(np.mean(np.abs(pred_o - true_o)), rel=1e-12)
    # ETTh1's test rows hold exact zeros (89 in OT); after float32 scaling and back they are ~1e-7,
    # which the default zero_eps still treats as zero, like the raw CSV's zeros.
    raw = etth1_raw[etth1.columns].to_numpy()[11424:14400]
    raw_true = np.stack([raw[i + 96:i + 192] for i in range(len(etth1.test))])
    keep = raw_true != 0
    assert (~keep).sum() > 0 and np.array_equal(keep, np.abs(true_o) > 1e-6)
    expected = np.mean(np.abs(pred_o[keep] - raw_true[keep]) / np.abs(raw_true[keep]))
    assert fm.mape(pred_o, true_o) == pytest.approx(expected, rel=1e-5)
    assert fm.mape(pred_o, true_o, zero_eps=0.0) > 1e3 * expected     # unguarded round-off zeros explode
    near = np.abs(true_o) > 0.5
    assert fm.mape(pred_o, true_o, zero_eps=0.5) == pytest.approx(
        np.mean(np.abs(pred_o[near] - true_o[near]) / np.abs(true_o[near])), rel=1e-12)
    with pytest.raises(ValueError, match="every true value is zero"):
        fm.mape(pred_o[:1], np.zeros_like(pred_o[:1]))


def test_mase_uses_seasonal_naive_training_error(etth1, naive):
    pred, true = naive
    pred_o, true_o = etth1.inverse_transform(pred), etth1.inverse_transform(true)
    train = etth1.inverse_transform(etth1.train.data.double().numpy())
    scale = np.mean(np.abs(train[24:] - train[:-24]), axis=0)
    expected = np.mean(np.mean(np.abs(pred_o - true_o), axis=(0, 1)) / scale)
    assert fm.mase(pred_o, true_o, train, season=24) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="season=0"):
        fm.mase(pred_o, true_o, train, season=0)
    with pytest.raises(ValueError, match="constant"):
        fm.mase(pred_o, true_o, np.ones_like(train), season=24)


def test_streaming_accumulator_equals_one_shot(etth1, naive):
    train = etth1.inverse_transform(etth1.train.data.double().numpy())
    acc = fm.ForecastMetrics(inverse=etth1.inverse_transform, train=train, season=24)
    for batch in make_loader(etth1.test, batch_size=256):
        acc.update(batch["x"][:, -24:].repeat(1, 4, 1), batch["y"])      # float32 torch batches
    result = acc.compute()
    pred, true = naive
    pred_o, true_o = etth1.inverse_transform(pred), etth1.inverse_transform(true)
    assert result["mse"] == pytest.approx(fm.mse(pred, true), rel=1e-9)
    assert result["mae"] == pytest.approx(fm.mae(pred, true), rel=1e-9)
    assert result["mae_orig"] == pytest.approx(fm.mae(pred_o, true_o), rel=1e-9)
    assert result["rmse_orig"] == pytest.approx(fm.rmse(pred_o, true_o), rel=1e-9)
    assert result["mape"] == pytest.approx(fm.mape(pred_o, true_o), rel=1e-9)
    assert result["mase"] == pytest.approx(fm.mase(pred_o, true_o, train, season=24), rel=1e-9)
    acc.reset()
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()
    plain = fm.ForecastMetrics()
    plain.update(pred[:10], true[:10])
    assert set(plain.compute()) == {"mse", "mae"}
