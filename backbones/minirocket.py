"""MiniRocket (Dempster et al., KDD 2021) as the non-deep reference: aeon's MiniRocket transform, scaled as aeon's
MiniRocketClassifier does (StandardScaler without centring), then scikit-learn's RidgeClassifierCV.

It is fitted in closed form (`fit_arrays`), not by gradient steps; the fitted transform parameters, the scaler
and the ridge weights are buffers, so the model saves and loads as a state dict like every other backbone.
The logits are the ridge decision values (a softmax of them ranks classes but is not a calibrated probability).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

# aeon's fitted `parameters` tuple, in order (the same for one channel or many)
_PARAMETER_NAMES = ("channels_per_combination", "channel_indices", "dilations", "features_per_dilation", "biases")
MIN_LENGTH = 9  # aeon's MiniRocket needs at least 9 steps (its kernels have length 9)


class MiniRocket(nn.Module):
    fixed_length = True  # aeon's transform takes equal-length series: batches are zero-padded to seq_length
    min_length = MIN_LENGTH  # shorter data is zero-padded up to it

    def __init__(self, num_channels: int, seq_length: int, num_classes: int, n_kernels: int = 10_000,
                 max_dilations_per_kernel: int = 32):
        super().__init__()
        if seq_length < MIN_LENGTH:
            raise ValueError(f"MiniRocket needs series of at least {MIN_LENGTH} steps, seq_length={seq_length}")
        self.num_channels, self.seq_length, self.num_classes = num_channels, seq_length, num_classes
        self.n_kernels, self.max_dilations_per_kernel = n_kernels, max_dilations_per_kernel
        for name in _PARAMETER_NAMES:
            self.register_buffer(name, torch.zeros(0, dtype=torch.float32 if name == "biases" else torch.int32))
        self.register_buffer("scale", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("coef", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("alpha", torch.zeros((), dtype=torch.float64))

    @property
    def fitted(self) -> bool:
        return self.coef.numel() > 0

    def adopt_shapes(self, state_dict) -> None:
        """The fitted sizes depend on the data: take them from a checkpoint before loading it strictly."""
        for name, buffer in self._buffers.items():
            incoming = state_dict.get(name)
            if incoming is not None and incoming.shape != buffer.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=buffer.dtype)

    def _transformer(self):
        from aeon.transformations.collection.convolution_based import MiniRocket as AeonMiniRocket

        transform = AeonMiniRocket(n_kernels=self.n_kernels, max_dilations_per_kernel=self.max_dilations_per_kernel,
                                   n_jobs=1)
        return transform

    def features(self, x: np.ndarray) -> np.ndarray:
        """aeon's transform of (B, C, T) float arrays with the fitted parameters."""
        transform = self._transformer()
        params = [getattr(self, n).cpu().numpy() for n in _PARAMETER_NAMES]
        transform.parameters = tuple(params)
        transform._n_jobs = 1
        return transform._transform(np.ascontiguousarray(x, dtype=np.float32))  # fitted state set above

    def fit_arrays(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> "MiniRocket":
        """Fit the transform on (N, C, T) training arrays, then the scaler and the cross-validated ridge."""
        from sklearn.linear_model import RidgeClassifierCV
        from sklearn.preprocessing import StandardScaler

        transform = self._transformer()
        transform.random_state = seed
        transform.fit(np.ascontiguousarray(x, dtype=np.float32))
        for name, value in zip(_PARAMETER_NAMES, transform.parameters, strict=True):
            setattr(self, name, torch.from_numpy(np.asarray(value).copy()))
        feats = self.features(x)
        scaler = StandardScaler(with_mean=False).fit(feats)
        ridge = RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)).fit(scaler.transform(feats), y)
        coef, intercept = np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_)
        if coef.shape[0] == 1:  # binary: one decision value, positive for the second class
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        if len(ridge.classes_) != self.num_classes:
            raise ValueError(f"MiniRocket: the training data has {len(ridge.classes_)} classes, the model "
                             f"{self.num_classes}")
        self.scale = torch.from_numpy(np.asarray(scaler.scale_, dtype=np.float64))
        self.coef = torch.from_numpy(coef.astype(np.float64))
        self.intercept = torch.from_numpy(np.asarray(intercept, dtype=np.float64))
        self.alpha = torch.tensor(float(ridge.alpha_), dtype=torch.float64)
        return self

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("MiniRocket is not fitted: train it from a recipe (it fits in closed form) or load "
                               "fitted weights")
        feats = torch.from_numpy(self.features(x.detach().float().cpu().numpy())).to(self.coef)
        logits = (feats / self.scale.to(self.coef)) @ self.coef.T + self.intercept.to(self.coef)
        return logits.to(device=x.device, dtype=x.dtype)
