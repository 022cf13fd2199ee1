"""Forecast metrics, numpy or torch in, Python floats out.

thuml convention: `mse`/`mae` are means over every element (batch x horizon x channel), reported on the
z-scored scale. The original-unit metrics (`mae`, `rmse`, `mape`, `mase`) take inverse-transformed
values. All sums are done in float64.

MAPE skips elements whose true value is zero (their percentage error is undefined; thuml's `MAPE`
does not guard and returns inf) and divides by the number of elements kept. "Zero" means
|true| <= zero_eps (default 1e-6; a float or one value per channel): values that went through
float32 scaling and back carry a round-off of about 1e-7 x the channel's std, so exact zeros of the
CSV no longer compare equal to 0. Raise zero_eps for channels with a large std. MAPE is a fraction
(0.1 = 10 %).

MASE scales the MAE by the in-sample seasonal-naive MAE of the training series,
mean |train[t] - train[t - season]| per channel (Hyndman & Koehler, 2006), so every channel is measured
against its own naive error; the channel results are averaged.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_float64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = _as_float64(pred), _as_float64(true)
    if pred.shape != true.shape:
        raise ValueError(f"pred shape {pred.shape} != true shape {true.shape}")
    if pred.size == 0:
        raise ValueError("empty forecast: nothing to score")
    return pred, true


def mse(pred, true) -> float:
    pred, true = _pair(pred, true)
    return float(np.mean((pred - true) ** 2))


def mae(pred, true) -> float:
    pred, true = _pair(pred, true)
    return float(np.mean(np.abs(pred - true)))


def rmse(pred, true) -> float:
    return float(np.sqrt(mse(pred, true)))


def mape(pred, true, zero_eps=1e-6) -> float:
    """Mean |pred - true| / |true| over elements with |true| > zero_eps (fraction, not percent)."""
    pred, true = _pair(pred, true)
    keep = np.abs(true) > zero_eps
    if not keep.any():
        raise ValueError("MAPE is undefined: every true value is zero")
    return float(np.mean(np.abs(pred[keep] - true[keep]) / np.abs(true[keep])))


def seasonal_naive_scale(train, season: int = 1) -> np.ndarray:
    """Per-channel in-sample MAE of the seasonal-naive forecast on the training series [T, N]."""
    train = _as_float64(train)
    if train.ndim == 1:
        train = train[:, None]
    if not 1 <= season < len(train):
        raise ValueError(f"season={season}: expected 1 <= season < {len(train)} (training length)")
    scale = np.mean(np.abs(train[season:] - train[:-season]), axis=0)
    if np.any(scale == 0):
        raise ValueError(f"MASE is undefined: channels {np.flatnonzero(scale == 0).tolist()} are constant "
                         f"at lag {season} in the training series")
    return scale


def mase(pred, true, train, season: int = 1) -> float:
    """MAE of each channel (last axis) divided by its seasonal-naive training MAE, averaged over channels."""
    pred, true = _pair(pred, true)
    scale = seasonal_naive_scale(train, season)
    if pred.shape[-1] != len(scale):
        raise ValueError(f"forecast has {pred.shape[-1]} channels, training series {len(scale)}")
    per_channel = np.abs(pred - true).reshape(-1, len(scale)).mean(axis=0)
    return float(np.mean(per_channel / scale))


class ForecastMetrics:
    """Streaming accumulator: update(pred, true) per batch, compute() at the end.

    Keeps float64 running sums only, never the forecasts, so evaluating 2785 x 96 x 7 windows costs a
    few per-channel vectors. `inverse` (e.g. `ForecastSplits.inverse_transform`) maps values to original
    units for mae_orig / rmse_orig / mape / mase; `train` (the original-unit training series [T, N])
    and `season` enable MASE. Inputs are [..., N] with channels last.
    """

    def __init__(self, inverse=None, train=None, season: int = 1, zero_eps=1e-6):
        self.inverse, self.zero_eps = inverse, zero_eps
        self.naive_scale = None if train is None else seasonal_naive_scale(train, season)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.sq_err = self.abs_err = self.sq_err_orig = self.abs_err_orig = None
        self.ape_sum, self.ape_count = 0.0, 0

    def _add(self, name: str, values: np.ndarray) -> None:
        total = getattr(self, name)
        setattr(self, name, values if total is None else total + values)

    def update(self, pred, true) -> None:
        pred, true = _pair(pred, true)
        channels = pred.shape[-1]
        err = (pred - true).reshape(-1, channels)
        self.count += err.shape[0]
        self._add("sq_err", np.sum(err ** 2, axis=0))
        self._add("abs_err", np.sum(np.abs(err), axis=0))
        if self.inverse is not None:
            pred, true = _as_float64(self.inverse(pred)), _as_float64(self.inverse(true))
            err = (pred - true).reshape(-1, channels)
            self._add("sq_err_orig", np.sum(err ** 2, axis=0))
            self._add("abs_err_orig", np.sum(np.abs(err), axis=0))
            true = true.reshape(-1, channels)
            keep = np.abs(true) > self.zero_eps
            self.ape_sum += float(np.sum(np.abs(err[keep]) / np.abs(true[keep])))
            self.ape_count += int(keep.sum())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("ForecastMetrics.compute() before any update()")
        n = self.count * len(self.sq_err)
        result = {"mse": float(self.sq_err.sum() / n), "mae": float(self.abs_err.sum() / n)}
        if self.inverse is not None:
            result["mae_orig"] = float(self.abs_err_orig.sum() / n)
            result["rmse_orig"] = float(np.sqrt(self.sq_err_orig.sum() / n))
            if self.ape_count:
                result["mape"] = self.ape_sum / self.ape_count
            if self.naive_scale is not None:
                if len(self.naive_scale) != len(self.abs_err_orig):
                    raise ValueError(f"forecast has {len(self.abs_err_orig)} channels, training series "
                                     f"{len(self.naive_scale)}")
                result["mase"] = float(np.mean(self.abs_err_orig / self.count / self.naive_scale))
        return result
