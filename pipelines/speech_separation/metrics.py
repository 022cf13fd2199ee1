"""Separation metrics, the standard way (torchmetrics' implementations):

- SI-SNR (Le Roux et al. 2019): zero-mean estimate and reference, the estimate projected on the reference;
  10 log10 of the projection's energy over the residual's.
- SDR: BSS-eval's signal-to-distortion ratio (a 512-tap distortion filter allowed, as fast-bss-eval and
  torchmetrics compute it).
- Both with the permutation of estimates that maximises the metric (speaker-wise), averaged over sources.
- The improvements (SI-SNRi, SDRi) subtract the same metric of the unprocessed mixture against each source.
Each utterance is scored on its own length (batch padding removed); the figures are means over utterances.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def pit_metric(estimates: torch.Tensor, sources: torch.Tensor, metric) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n, T) estimates and sources -> (best mean metric (B,), best permutation (B, n))."""
    from torchmetrics.functional.audio import permutation_invariant_training

    return permutation_invariant_training(estimates, sources, metric, mode="speaker-wise", eval_func="max")


def si_snr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

    return scale_invariant_signal_noise_ratio(estimate, reference)


def sdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    from torchmetrics.functional.audio import signal_distortion_ratio

    with _one_thread():
        return signal_distortion_ratio(estimate.double(), reference.double(), filter_length=512).to(estimate.dtype)


@contextmanager
def _one_thread():
    # The distortion filter is a batched float64 torch.linalg.solve; with more than one thread, MKL's LU
    # (DLASWP) rejects its own pivots on some CPUs (seen with torch 2.11 on AMD EPYC: "Pivots given to lu_solve
    # must all be greater or equal to 1" for every item), while one thread solves them correctly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def separation_scores(estimate: torch.Tensor, sources: torch.Tensor, mixture: torch.Tensor, with_sdr: bool = True) -> dict:
    """One utterance: estimate and sources (n, T), mixture (T,) -> SI-SNR(i) and SDR(i) in dB."""
    est, src = estimate[None].double(), sources[None].double()
    mix = mixture.double().expand_as(sources)[None]
    scores = {}
    best, _ = pit_metric(est, src, si_snr)
    scores["si_snr"] = float(best)
    scores["si_snri"] = float(best - si_snr(mix, src).mean())
    if with_sdr:
        best, _ = pit_metric(est, src, sdr)
        scores["sdr"] = float(best)
        scores["sdri"] = float(best - sdr(mix, src).mean())
    return scores


class SeparationMetrics:
    """Streaming means of SI-SNR, SI-SNRi, SDR and SDRi over utterances."""

    def __init__(self, with_sdr: bool = True):
        self.with_sdr = with_sdr
        self.totals: dict = {}
        self.count = 0

    def update(self, prediction: torch.Tensor, target: dict) -> None:
        """prediction (B, n, T); target: {"sources": (B, n, T), "mixture": (B, T), "lengths": (B,)}."""
        lengths = target.get("lengths")
        for i in range(prediction.shape[0]):
            n = int(lengths[i]) if lengths is not None else prediction.shape[-1]
            scores = separation_scores(prediction[i, :, :n], target["sources"][i, :, :n], target["mixture"][i, :n],
                                       self.with_sdr)
            for key, value in scores.items():
                self.totals[key] = self.totals.get(key, 0.0) + value
            self.count += 1

    def compute(self) -> dict:
        return {key: round(value / max(1, self.count), 4) for key, value in self.totals.items()}
