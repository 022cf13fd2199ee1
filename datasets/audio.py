"""Audio I/O shared by the speech domains: read any file soundfile decodes (wav/flac/ogg/mp3/aiff) at any rate,
mono (channels averaged) or not, resampled on request; write WAV/FLAC. Bad files raise ``AudioFileError`` naming
the file and what is wrong with it."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

MP3_SLACK_FRAMES = 2 * 1152   # samples: two MPEG-1 Layer III frames


class AudioFileError(ValueError):
    """An audio file that cannot be used; the message names the file and what is wrong with it."""


# ---------------------------------------------------------------------------------------------- audio I/O
def _check_wav_complete(path: Path, size: int) -> None:
    # libsndfile quietly reads a cut WAV up to where the bytes stop; the RIFF header still says how long the
    # data chunk should be, so compare the two.
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return
        endian = "<" if head[:4] == b"RIFF" else ">"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            (length,) = struct.unpack(endian + "I", chunk[4:])
            if chunk[:4] == b"data":
                available = size - pos - 8
                # 0 and 0xFFFFFFFF mean "unknown" (streamed writers): nothing to compare with.
                if 0 < length < 0xFFFFFFFF and available < length:
                    raise AudioFileError(f"{path}: truncated WAV: the header declares {length} data bytes, "
                                         f"the file holds {available}")
                return
            pos += 8 + length + (length & 1)


def read_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True) -> tuple[torch.Tensor, int]:
    """Read an audio file with soundfile as float32 in [-1, 1].

    Returns ``(wave, sr)``: wave is (T,) when ``mono`` (channels averaged), else (channels, T). With
    ``sample_rate`` given and different from the file's, the audio is resampled
    (``torchaudio.functional.resample``) and sr is ``sample_rate``. Missing, unreadable, truncated, empty
    files and non-finite samples raise ``AudioFileError`` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if not path.is_file():
        raise AudioFileError(f"{path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise AudioFileError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        _check_wav_complete(path, size)
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioFileError:
        raise
    except (RuntimeError, TypeError, ValueError, OSError) as err:  # LibsndfileError is a RuntimeError
        raise AudioFileError(f"{path}: not a readable audio file ({err})") from err
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: no samples (zero-length audio)")
    # An MP3's frame count is an estimate from its header (encoder delay and padding): up to two MPEG frames short
    # is normal, not truncation.
    slack = MP3_SLACK_FRAMES if info.format == "MP3" else 0
    if data.shape[0] < info.frames - slack:
        raise AudioFileError(f"{path}: truncated: the header declares {info.frames} frames, "
                             f"only {data.shape[0]} could be read")
    finite = np.isfinite(data)
    if not finite.all():
        frame = int(np.argwhere(~finite)[0, 0])
        raise AudioFileError(f"{path}: non-finite sample (NaN/Inf) at frame {frame}")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))
    if mono:
        wave = wave.mean(0)
    if sample_rate is not None and int(sample_rate) != sr:
        wave, sr = resample(wave, sr, int(sample_rate)), int(sample_rate)
    return wave, sr


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int, block_s: float = 30.0) -> torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's windowed-sinc, its default filter).

    Inputs longer than two blocks of ``block_s`` seconds go through in blocks, each with enough neighbouring
    samples for the filter on both sides, so the result is the one-pass result while the memory stays that of
    one block: torchaudio's convolution unfolds its whole input (13 x the samples for 8 -> 16 kHz: 1.5 GB for an
    hour of 8 kHz audio).
    """
    if orig_sr == new_sr:
        return wave
    import math

    import torchaudio.functional as AF  # heavy import, only when a rate differs

    wave, orig_sr, new_sr = wave.float(), int(orig_sr), int(new_sr)
    step = orig_sr // math.gcd(orig_sr, new_sr)      # input samples per output period
    out_step = new_sr // math.gcd(orig_sr, new_sr)
    length = wave.shape[-1]
    block = max(1, int(block_s * orig_sr) // step) * step
    if length <= 2 * block:
        return AF.resample(wave, orig_sr, new_sr)
    width = math.ceil(6 * step / (0.99 * min(step, out_step)))   # torchaudio's kernel half-width (defaults)
    margin = math.ceil((width + step) / step) * step
    pieces = []
    for start in range(0, length, block):
        end = min(start + block, length)
        first, last = max(0, start - margin), min(length, end + margin)
        out = AF.resample(wave[..., first:last], orig_sr, new_sr)
        offset = (start - first) // step * out_step
        pieces.append(out[..., offset:offset + (end - start) // step * out_step] if end < length else out[..., offset:])
    return torch.cat(pieces, dim=-1)


def write_audio(path: str | Path, wave, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write (T,) or (channels, T) audio; the format follows the suffix (WAV when soundfile does not know it).

    ``subtype`` is a soundfile subtype: "PCM_16" (default; samples clipped to [-1, 1] first, since libsndfile
    would otherwise wrap around), "PCM_24", "FLOAT", ...
    """
    path = Path(path)
    data = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if data.ndim not in (1, 2) or data.shape[-1] == 0:
        raise ValueError(f"{path}: expected (T,) or (channels, T) audio with T > 0, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: audio to write has non-finite samples")
    data = data.astype(np.float32 if subtype.upper() != "DOUBLE" else np.float64)
    if subtype.upper().startswith("PCM"):
        data = np.clip(data, -1.0, 1.0)
    file_format = None if path.suffix[1:].upper() in sf.available_formats() else "WAV"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.T if data.ndim == 2 else data, int(sample_rate), subtype=subtype, format=file_format)
    return path
