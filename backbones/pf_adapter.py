"""pytorch-forecasting models (N-HiTS, TFT) as backbones on our [B, L, N] windows.

Each channel is forecast as its own univariate series (channel independence), so one model serves any
number of channels. Per window and channel, the look-back is optionally standardised (mean, population
std + 1e-5) and the pytorch-forecasting model receives exactly the input dict its own TimeSeriesDataSet
loader would produce for that series; its output is turned back into the [B, pred_len, N] forecast.
pytorch_forecasting is imported only when an adapter is built.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

_MODELS = ("nhits", "tft")


def _structure_dataset(seq_len: int, pred_len: int, relative_time: bool):
    """The TimeSeriesDataSet pytorch-forecasting builds its models from.

    Only its structure is used (variable names and order, lengths, identity target normaliser):
    nothing is fitted on the values, so one series exactly one window long is enough.
    """
    from pytorch_forecasting import TimeSeriesDataSet

    length = seq_len + pred_len
    frame = pd.DataFrame({"series": "0", "time_idx": np.arange(length), "value": np.arange(length, dtype=np.float32)})
    return TimeSeriesDataSet(
        frame, time_idx="time_idx", target="value", group_ids=["series"],
        min_encoder_length=seq_len, max_encoder_length=seq_len,
        min_prediction_length=pred_len, max_prediction_length=pred_len,
        time_varying_unknown_reals=["value"], target_normalizer=None, add_relative_time_idx=relative_time)


class PFForecaster(nn.Module):
    """forward(x [B, seq_len, N], x_mark ignored) -> [B, pred_len, N] through a pytorch-forecasting model.

    model: 'nhits' (NHiTS.from_dataset) or 'tft' (TemporalFusionTransformer.from_dataset, with the
    relative time index as its only known input). model_kwargs go to `from_dataset` (hidden_size,
    dropout, loss, ...); a quantile loss is reduced to its point forecast with the model's
    `to_prediction`. use_norm standardises each input series and restores the forecast's scale via
    pytorch-forecasting's own target_scale mechanism.
    """

    def __init__(self, model: str = "nhits", seq_len: int = 96, pred_len: int = 96, use_norm: bool = True,
                 **model_kwargs):
        super().__init__()
        if model not in _MODELS:
            raise ValueError(f"model={model!r}: expected one of {_MODELS}")
        from pytorch_forecasting import NHiTS, TemporalFusionTransformer
        from pytorch_forecasting.metrics import MAE

        self.kind, self.seq_len, self.pred_len, self.use_norm = model, seq_len, pred_len, use_norm
        dataset = _structure_dataset(seq_len, pred_len, relative_time=model == "tft")
        self.reals = list(dataset.reals)
        self.value_position = self.reals.index("value")
        model_kwargs.setdefault("loss", MAE())
        # The pf model's own metric logging is unused here and its hparams would duplicate our config.
        model_kwargs.setdefault("logging_metrics", nn.ModuleList())
        builder = NHiTS if model == "nhits" else TemporalFusionTransformer
        self.model = builder.from_dataset(dataset, **model_kwargs)

    def pf_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pytorch-forecasting input dict for x [B, L, N] (series ordered batch-major, then channel),
        with the (possibly standardised) look-back and its target_scale (center, scale)."""
        batch, length, channels = x.shape
        series = x.transpose(1, 2).reshape(batch * channels, length)
        if self.use_norm:
            center = series.mean(dim=1, keepdim=True).detach()
            scale = torch.sqrt(series.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
            series = (series - center) / scale
            target_scale = torch.cat([center, scale], dim=1)
        else:
            target_scale = torch.stack([torch.zeros(len(series)), torch.ones(len(series))], dim=1).to(x)
        count, device = len(series), x.device
        encoder_cont = x.new_zeros(count, length, len(self.reals))
        decoder_cont = x.new_zeros(count, self.pred_len, len(self.reals))
        encoder_cont[..., self.value_position] = series
        if "relative_time_idx" in self.reals:
            # As the pf loader: steps -L..H-1 divided by the encoder length (unscaled).
            steps = torch.arange(-length, self.pred_len, device=device, dtype=x.dtype) / self.seq_len
            position = self.reals.index("relative_time_idx")
            encoder_cont[..., position] = steps[:length]
            decoder_cont[..., position] = steps[length:]

        def lengths(n: int) -> torch.Tensor:
            return torch.full((count,), n, dtype=torch.long, device=device)

        return {
            "encoder_cat": torch.zeros(count, length, 0, dtype=torch.long, device=device),
            "encoder_cont": encoder_cont,
            "encoder_target": series,
            "encoder_lengths": lengths(length),
            "decoder_cat": torch.zeros(count, self.pred_len, 0, dtype=torch.long, device=device),
            "decoder_cont": decoder_cont,   # future values are unknown; the models read only known inputs here
            "decoder_target": x.new_zeros(count, self.pred_len),
            "decoder_lengths": lengths(self.pred_len),
            "decoder_time_idx": torch.arange(length, length + self.pred_len, device=device).expand(count, -1),
            "groups": torch.zeros(count, 1, dtype=torch.long, device=device),
            "target_scale": target_scale,
        }

    def forward(self, x, x_mark=None):
        if x.ndim != 3 or x.shape[1] != self.seq_len:
            raise ValueError(f"x: expected [B, {self.seq_len}, N], got {tuple(x.shape)}")
        batch, _, channels = x.shape
        output = self.model(self.pf_inputs(x))
        forecast = self.model.to_prediction(output)                       # [B*N, pred_len], original scale
        return forecast.reshape(batch, channels, self.pred_len).transpose(1, 2)
