"""The speech-recognition baseline: torchaudio's Conformer (Gulati et al., 2020) between the Squeezeformer
release's front end and subsampling and a CTC head, so both backbones share one interface and recipe flow:
forward(features [B, feat_in, T], feature_lengths [B]) -> (log_probs [B, T', num_classes + 1], lengths [B]),
blank = the last class. Defaults are Conformer-S (144 wide, 16 layers, 4 heads, kernel 31).

torchaudio's convolution module does not zero padded frames, so in a padded batch the last frames of a
shorter utterance depend a little on how much padding follows them (the Squeezeformer masks them).
"""
from __future__ import annotations

import torch
import torchaudio

from mtp.backbones.squeezeformer import (RELEASED_PREPROCESSOR, CTCDecoder, CTCModel,
                                         DepthwiseStridingSubsampling, MelPreprocessor, check_lengths)


class ConformerCTC(CTCModel):
    def __init__(self, num_classes: int = 128, feat_in: int = 80, d_model: int = 144, n_layers: int = 16,
                 n_heads: int = 4, ff_expansion_factor: int = 4, conv_kernel_size: int = 31,
                 subsampling_factor: int = 4, dropout: float = 0.1, preprocessor: dict | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes (the vocabulary size, without the blank) must be >= 1, got {num_classes}")
        if "features" in (preprocessor or {}) and preprocessor["features"] != feat_in:
            raise ValueError(f"preprocessor features ({preprocessor['features']}) must equal feat_in ({feat_in})")
        self.num_classes = num_classes
        self.preprocessor = MelPreprocessor(**{**RELEASED_PREPROCESSOR, **(preprocessor or {}), "features": feat_in})
        self.pre_encode = DepthwiseStridingSubsampling(feat_in, d_model, subsampling_factor, d_model)
        self.conformer = torchaudio.models.Conformer(
            input_dim=d_model, num_heads=n_heads, ffn_dim=d_model * ff_expansion_factor, num_layers=n_layers,
            depthwise_conv_kernel_size=conv_kernel_size, dropout=dropout)
        self.decoder = CTCDecoder(d_model, num_classes)

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor | None = None):
        if features.dim() != 3:
            raise ValueError(f"ConformerCTC: expected features [batch, feat_in, time], got {tuple(features.shape)}")
        lengths = check_lengths(feature_lengths, features.shape[0], features.shape[-1], "feature", features.device)
        x, lengths = self.pre_encode(features.to(self.decoder.decoder_layers[0].weight.dtype).transpose(1, 2),
                                     lengths)
        # torchaudio sizes its padding mask by the longest length, so the time axis must end there
        x, lengths = self.conformer(x[:, :int(lengths.max())], lengths)
        return self.decoder(x.transpose(1, 2)), lengths


__all__ = ["ConformerCTC"]
