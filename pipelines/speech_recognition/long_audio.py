"""Audio of any length: chunked CTC inference merged at the alignment level, and energy-based voice activity
segmentation.

The waveform is cut into central parts of ``chunk`` samples; each goes through the model with ``context``
samples of the neighbouring audio on both sides, and only the output frames whose time falls in its central
part are kept. Concatenated, those frames form one alignment of the whole file, which is decoded once, so a
word that straddles a chunk edge is neither cut (its frames come from chunks that heard all of it, with
context) nor doubled (every frame is kept exactly once). Chunk and context are whole multiples of the model's
output frame (hop x subsampling samples), so frame f of a window that starts at sample s is the file's frame
s / stride + f. Only ``batch_chunks`` windows are in the model at a time: model memory is bounded by the
chunk, whatever the length. What grows with the length is the kept alignment: 4 bytes per frame (25 frames/s)
for greedy decoding, 4 x classes bytes per frame when the beam decoder needs the log-probs (129 classes: 13 kB/s),
and the decoded waveform itself (4 bytes per sample).
"""
from __future__ import annotations

import math

import torch


def chunk_windows(length: int, chunk: int, context: int, stride: int) -> list[tuple[int, int, int, int | None]]:
    """[(window_start, window_end, first_kept_frame, end_kept_frame or None)] in samples / window frames.

    ``chunk`` and ``context`` must be multiples of ``stride``. The last window keeps every frame to its end.
    """
    if chunk <= 0 or chunk % stride or context < 0 or context % stride:
        raise ValueError(f"chunk ({chunk}) and context ({context}) must be positive multiples of the frame stride "
                         f"({stride} samples)")
    windows = []
    count = max(1, math.ceil(length / chunk))
    for k in range(count):
        centre = k * chunk
        start, end = max(0, centre - context), min(length, centre + chunk + context)
        first = (centre - start) // stride
        last = None if k == count - 1 else first + chunk // stride
        windows.append((start, end, first, last))
    return windows


@torch.inference_mode()
def chunked_alignment(logits_fn, wave: torch.Tensor, stride: int, chunk: int, context: int, batch_chunks: int = 4,
                      keep_log_probs: bool = False) -> torch.Tensor:
    """``logits_fn(waves (B, L), lengths (B,)) -> (log_probs (B, T', C), lengths (B,))``; ``wave`` (N,).

    Returns the file's best-path ids per frame (F,) or, with ``keep_log_probs``, its log-probs (F, C). A wave that
    fits one chunk plus its context goes through in one call.
    """
    length = wave.shape[-1]
    if length <= chunk + 2 * context:
        log_probs, lengths = logits_fn(wave[None], torch.tensor([length]))
        out = log_probs[0, : int(lengths[0])].float().cpu()
        return out if keep_log_probs else out.argmax(-1)
    windows = chunk_windows(length, chunk, context, stride)
    pieces = []
    for first in range(0, len(windows), batch_chunks):
        group = windows[first:first + batch_chunks]
        sizes = [end - start for start, end, _, _ in group]
        batch = torch.zeros(len(group), max(sizes), dtype=wave.dtype, device=wave.device)
        for i, (start, end, _, _) in enumerate(group):
            batch[i, : end - start] = wave[start:end]
        log_probs, lengths = logits_fn(batch, torch.tensor(sizes))
        for i, (_, _, keep_from, keep_to) in enumerate(group):
            valid = int(lengths[i])
            kept = log_probs[i, keep_from: valid if keep_to is None else min(keep_to, valid)].float().cpu()
            pieces.append(kept if keep_log_probs else kept.argmax(-1))
    return torch.cat(pieces)


def energy_segments(wave: torch.Tensor, rate: int, threshold_db: float = 40.0, frame_s: float = 0.03,
                    min_silence_s: float = 0.5, min_speech_s: float = 0.1, pad_s: float = 0.2) -> list[tuple[int, int]]:
    """Voice activity by frame energy: a frame is speech when its RMS level is within ``threshold_db`` of the
    loud frames' level (the 99th percentile of frame levels). Speech runs closer than ``min_silence_s`` are
    joined, runs shorter than ``min_speech_s`` dropped, each segment widened by ``pad_s`` on both sides.
    Returns [(start, end)] in samples; digital silence gives []."""
    frame = max(1, int(round(frame_s * rate)))
    count = wave.shape[-1] // frame
    if count == 0:
        return [(0, wave.shape[-1])] if wave.abs().max() > 0 else []
    power = wave[: count * frame].double().reshape(count, frame).pow(2).mean(-1)
    if float(power.max()) == 0.0:
        return []
    level = 10 * torch.log10(power.clamp_min(1e-20))
    loud = torch.quantile(level, 0.99)
    speech = (level >= loud - threshold_db).tolist()
    runs, start = [], None
    for i, flag in enumerate(speech + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append([start, i])
            start = None
    gap = int(round(min_silence_s / frame_s))
    merged = []
    for run in runs:
        if merged and run[0] - merged[-1][1] < gap:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    pad, shortest = int(round(pad_s * rate)), int(round(min_speech_s * rate))
    segments = []
    for a, b in merged:
        start, end = max(0, a * frame - pad), min(wave.shape[-1], b * frame + pad)
        if (b - a) * frame < shortest:
            continue
        if segments and start <= segments[-1][1]:
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return segments
