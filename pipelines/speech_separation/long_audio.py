"""Separating audio of any length in overlapping segments, with a bounded amount of model memory.

Each segment is separated on its own; its estimates are put in the order of the previous segment's by their
correlation on the samples the two segments share, so one speaker stays on one output for the whole file.
The segments are then cross-faded over the overlap (linear ramps that sum to one) and added into the output.
"""
from __future__ import annotations

import itertools

import torch


def segment_starts(length: int, segment: int, hop: int) -> list[int]:
    """Starts of segments of `segment` samples every `hop` samples; the last one ends at `length`."""
    if length <= segment:
        return [0]
    starts = list(range(0, length - segment, hop))
    starts.append(length - segment)
    return starts


def best_permutation(previous: torch.Tensor, current: torch.Tensor) -> tuple[int, ...]:
    """The order of `current`'s sources (n, L) that best matches `previous` (n, L): the permutation with the
    largest summed normalised correlation. Exhaustive over n! orders (n is 2-4 speakers)."""
    a = previous - previous.mean(dim=1, keepdim=True)
    b = current - current.mean(dim=1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-8)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-8)
    score = a @ b.T  # score[i, j]: previous source i against current source j
    n = score.shape[0]
    return max(itertools.permutations(range(n)), key=lambda p: float(sum(score[i, p[i]] for i in range(n))))


@torch.inference_mode()
def separate_long(separate, mixture: torch.Tensor, num_sources: int, segment: int, overlap: int,
                  batch_segments: int = 4, align: bool = True) -> torch.Tensor:
    """`separate` maps (B, L) mixtures to (B, num_sources, L) estimates; returns (num_sources, T) for a (T,)
    mixture. Short inputs go through in one call; longer ones in segments of `segment` samples overlapping by
    `overlap`. Only `batch_segments` segments are in the model at a time. `align=False` keeps each segment's
    own speaker order (what the alignment buys can be measured against it)."""
    length = mixture.shape[-1]
    if length <= segment:
        return separate(mixture[None])[0]
    if not 0 < overlap < segment:
        raise ValueError(f"overlap ({overlap} samples) must be positive and shorter than a segment ({segment})")
    hop = segment - overlap
    starts = segment_starts(length, segment, hop)
    out = torch.zeros(num_sources, length, dtype=mixture.dtype, device=mixture.device)
    weight = torch.zeros(length, dtype=mixture.dtype, device=mixture.device)
    previous, previous_start = None, 0
    for first in range(0, len(starts), batch_segments):
        chunk = starts[first:first + batch_segments]
        estimates = separate(torch.stack([mixture[s:s + segment] for s in chunk]))
        for start, estimate in zip(chunk, estimates):
            if previous is not None and align:
                shared = previous_start + segment - start  # samples this segment shares with the previous one
                order = best_permutation(previous[:, -shared:], estimate[:, :shared])
                estimate = estimate[list(order)]
            ramp = _crossfade(segment, start, length, overlap, mixture)
            out[:, start:start + segment] += estimate * ramp
            weight[start:start + segment] += ramp
            previous, previous_start = estimate, start
    return out / weight.clamp_min(1e-8)


def _crossfade(segment: int, start: int, length: int, overlap: int, like: torch.Tensor) -> torch.Tensor:
    """Weights of one segment: linear ramps over the overlaps at its inner edges, 1 elsewhere."""
    ramp = torch.ones(segment, dtype=like.dtype, device=like.device)
    rise = torch.linspace(0, 1, overlap + 2, dtype=like.dtype, device=like.device)[1:-1]
    if start > 0:
        ramp[:overlap] = rise
    if start + segment < length:
        ramp[-overlap:] = rise.flip(0)
    return ramp


def match_loudness(estimates: torch.Tensor, mixture: torch.Tensor, quiet_db: float = 30.0) -> torch.Tensor:
    """Each estimate rescaled to the mixture's RMS, as ClearerVoice's decoder does (separation outputs carry
    no absolute level: the loss is scale-invariant). An estimate more than `quiet_db` below the loudest one is
    what is left on the output of a speaker who is not there (one speaker only): it gets the loudest estimate's
    gain instead of its own, which would raise that residue to speech level."""
    target = mixture.pow(2).mean().sqrt()
    rms = estimates.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-8)
    gains = target / rms
    loudest = rms.flatten().argmax()
    quiet = rms < rms.flatten()[loudest] * 10.0 ** (-quiet_db / 20.0)
    gains = torch.where(quiet, gains.flatten()[loudest], gains)
    return estimates * gains
