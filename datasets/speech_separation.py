"""Speech separation data: WSJ0-2mix-style mixing, FSDD mixtures (on the fly and from lists), LibriMix and
wsj0-2mix folders, and long two-speaker streams (audio I/O lives in datasets/audio.py).

Every dataset returns ``{"mixture": (T,), "sources": (n_src, T), "id": str}`` (float32, at the dataset's
sample rate) and has ``collate(batch)``, which zero-pads at the end to the batch's longest item and returns
``{"mixture": (B, T), "sources": (B, n_src, T), "lengths": (B,), "ids": [...]}``.

Mixing convention (``mix_sources``, after the wsj0-2mix scripts): each source is scaled to the same level,
then s1 is weighted 10^(snr/20) relative to s2 (split symmetrically, +snr/2 and -snr/2 dB), the shorter one is
zero-padded at the end, and, when the peak of the mixture or of either source would exceed 0.9, all are scaled
down together. The returned sources are the scaled ones, so ``sources.sum(0) == mixture`` exactly.
The level is the RMS over the source's own samples: wsj0-2mix uses the ITU-T P.56 active level, but FSDD clips
are trimmed to near-minimal silence, where the two agree closely, and the plain RMS keeps the relative level
exactly checkable.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

# audio I/O lives in mtp.datasets.audio (shared with speech recognition); re-exported here for existing imports
from mtp.datasets.audio import AudioFileError, _check_wav_complete, read_audio, resample, write_audio  # noqa: F401
from mtp.datasets.fsdd import FSDDFile, fsdd_files, fsdd_recordings_dir  # noqa: F401  (shared with ASR)
from mtp.files import data_dir, resolve_data_path

PEAK = 0.9          # wsj0-2mix's and LibriMix's MAX_AMP: no clipping when written as 16-bit PCM
LEVEL_DB = -25.0    # RMS of each source before the relative level, dBFS; rarely needs the peak cap
FSDD_TRAIN_TAKES = range(10, 50)   # takes 0-4 are the test list's, 5-9 the validation list's
STREAM_PAUSE_S = (0.1, 0.5)        # pauses between one speaker's utterances in a stream, seconds


# ---------------------------------------------------------------------------------------------- mixing
def _as_wave(x, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty (T,) waveform, got shape {a.shape}")
    return a.astype(np.float64)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def _cap_peak(sources: np.ndarray, peak: float) -> np.ndarray:
    top = max(float(np.abs(sources.sum(0)).max()), float(np.abs(sources).max()))
    return sources * (peak / top) if top > peak else sources


def mix_sources(s1, s2, snr_db: float, *, level_db: float = LEVEL_DB,
                peak: float = PEAK) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix two utterances the wsj0-2mix way; returns ``(mixture (T,), sources (2, T))``, float32.

    Both are scaled to RMS ``level_db`` dBFS (over their own samples), then by +snr/2 and -snr/2 dB, so
    rms(s1) / rms(s2) = 10^(snr/20). The shorter is zero-padded at the end ("max" mode: FSDD digits are short
    and of different lengths, so "min" would cut words). If the mixture or a source would peak above
    ``peak``, everything is scaled down together (the relative level is kept). ``mixture == sources.sum(0)``
    exactly (the mixture is the float32 sum of the returned sources).
    """
    a, b = _as_wave(s1, "s1"), _as_wave(s2, "s2")
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    ref = 10.0 ** (level_db / 20.0)
    out = np.zeros((2, max(a.size, b.size)))
    for row, (wave, name, sign) in enumerate(((a, "s1", 1.0), (b, "s2", -1.0))):
        rms = _rms(wave)
        if not rms > 0:
            raise ValueError(f"{name} is silent (RMS 0): it has no level to mix at")
        out[row, : wave.size] = wave * (ref / rms * 10.0 ** (sign * snr_db / 40.0))
    sources = torch.from_numpy(_cap_peak(out, peak).astype(np.float32))
    return sources[0] + sources[1], sources


# ---------------------------------------------------------------------------------------------- datasets
class SeparationDataset(Dataset):
    """Shared batching: zero-pad at the end to the batch's longest item."""

    sample_rate: int
    n_src: int

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        lengths = torch.tensor([item["mixture"].shape[-1] for item in batch], dtype=torch.long)
        longest = int(lengths.max())
        n_src = batch[0]["sources"].shape[0]
        mixture = torch.zeros(len(batch), longest)
        sources = torch.zeros(len(batch), n_src, longest)
        for i, item in enumerate(batch):
            n = item["mixture"].shape[-1]
            mixture[i, :n] = item["mixture"]
            sources[i, :, :n] = item["sources"]
        return {"mixture": mixture, "sources": sources, "lengths": lengths, "ids": [item["id"] for item in batch]}


def _item(mixture: torch.Tensor, sources: torch.Tensor, item_id: str) -> dict:
    return {"mixture": mixture.float(), "sources": sources.float(), "id": item_id}


def _missing_message(source: str, missing: list[str], total: int) -> str:
    shown = "; ".join(missing[:5])
    more = f"; ... ({len(missing) - 5} more)" if len(missing) > 5 else ""
    return f"{source}: {len(missing)} of {total} files do not exist: {shown}{more}"


class FSDDMixtures(SeparationDataset):
    """Two-speaker FSDD mixtures drawn on the fly (training).

    Item ``index`` of epoch ``e`` draws, from ``np.random.default_rng((seed, e, index))``, one utterance
    uniformly, a second uniformly among the other speakers' utterances, and a relative level uniform in
    [-snr_range, snr_range] dB; so every epoch differs and a resumed run replays the same mixtures.
    ``mixtures_per_epoch`` defaults to the number of utterances. Decoded files are kept in memory (FSDD
    train takes are ~40 MB as float32).

    ``stream_fraction`` of the items (drawn per item) are instead ``crop_s``-second crops of a two-speaker
    stream, made as ``make_stream`` makes its long recordings: each of the two speakers' utterances in a row with
    pauses uniform in ``pause_s``, the crop starting at a random point. Pairs that start together teach a model
    nothing about speech that begins mid-segment, one speaker talking alone, or words cut at a segment edge,
    which is what every segment of a long recording holds.
    """

    n_src = 2

    def __init__(self, root: str | Path | None, takes=FSDD_TRAIN_TAKES, sample_rate: int = 8000,
                 mixtures_per_epoch: int | None = None, snr_range: float = 2.5, seed: int = 0, cache: bool = True,
                 stream_fraction: float = 0.0, crop_s: float = 2.0, pause_s: tuple[float, float] = STREAM_PAUSE_S):
        self.files = fsdd_files(root, takes)
        speakers = sorted({f.speaker for f in self.files})
        if len(speakers) < 2:
            raise ValueError(f"FSDD takes {sorted(set(takes))}: two speakers are needed, found {speakers}")
        self._others = {s: np.array([i for i, f in enumerate(self.files) if f.speaker != s]) for s in speakers}
        self._by_speaker = {s: np.array([i for i, f in enumerate(self.files) if f.speaker == s]) for s in speakers}
        if not 0.0 <= stream_fraction <= 1.0:
            raise ValueError(f"stream_fraction must be within [0, 1], got {stream_fraction}")
        if stream_fraction > 0 and not crop_s > 0:
            raise ValueError(f"crop_s must be > 0 seconds, got {crop_s}")
        self.stream_fraction, self.crop_s = float(stream_fraction), float(crop_s)
        self.pause = _pause_samples(pause_s, sample_rate)
        self.sample_rate = int(sample_rate)
        self.mixtures_per_epoch = len(self.files) if mixtures_per_epoch is None else int(mixtures_per_epoch)
        if self.mixtures_per_epoch < 1:
            raise ValueError(f"mixtures_per_epoch must be >= 1, got {mixtures_per_epoch}")
        if not snr_range >= 0:
            raise ValueError(f"snr_range must be >= 0 dB, got {snr_range}")
        self.snr_range, self.seed, self.epoch = float(snr_range), int(seed), 0
        self.cache = cache
        self._waves: dict[Path, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        """Choose which mixtures the epoch's items are (the engine calls this at each epoch start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.mixtures_per_epoch

    def draw(self, index: int) -> tuple[FSDDFile, FSDDFile, float]:
        """The (s1, s2, relative level in dB) of item ``index`` in the current epoch, without reading audio."""
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        first = self.files[int(rng.integers(len(self.files)))]
        others = self._others[first.speaker]
        second = self.files[int(others[rng.integers(len(others))])]
        return first, second, float(rng.uniform(-self.snr_range, self.snr_range))

    def _wave(self, path: Path) -> torch.Tensor:
        wave = self._waves.get(path)
        if wave is None:
            wave = read_audio(path, self.sample_rate)[0]
            if self.cache:
                self._waves[path] = wave
        return wave

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} mixtures")
        s1, s2, snr = self.draw(index)
        if self.stream_fraction > 0:
            rng = np.random.default_rng((self.seed, self.epoch, int(index), 1))  # independent of draw()'s stream
            if rng.random() < self.stream_fraction:
                item = self._stream_crop(s1.speaker, s2.speaker, snr, rng, index)
                if item is not None:
                    return item
        mixture, sources = mix_sources(self._wave(s1.path), self._wave(s2.path), snr)
        return _item(mixture, sources, f"e{self.epoch}_{index:06d}_{s1.path.stem}+{s2.path.stem}")

    def _stream_crop(self, speaker_a: str, speaker_b: str, snr: float, rng: np.random.Generator,
                     index: int) -> dict | None:
        length = int(round(self.crop_s * self.sample_rate))
        lead = int(rng.integers(length))  # where in the stream the crop starts: anywhere in a word or a pause
        clips = []
        for speaker in (speaker_a, speaker_b):
            # Enough utterances to fill lead + crop even if every one is short; _track reuses them if not.
            chosen = rng.choice(self._by_speaker[speaker], size=min(12, len(self._by_speaker[speaker])),
                                replace=False)
            clips.append([self._wave(self.files[int(i)].path).numpy().astype(np.float64) for i in chosen])
        mixture, sources = _stream(clips[0], clips[1], lead + length, self.pause, rng, snr=snr)
        if not bool((sources[:, lead:].abs().amax(dim=1) > 0).all()):
            return None  # a crop with one speaker silent throughout (only with crops shorter than a pause)
        return _item(mixture[lead:], sources[:, lead:], f"e{self.epoch}_{index:06d}_stream_{speaker_a}+{speaker_b}")


class MixtureList(SeparationDataset):
    """Fixed mixtures listed in a CSV ``mix_id,s1,s2,s1_snr_db_rel_s2`` (file names relative to
    ``audio_root`` unless absolute), mixed with ``mix_sources``. Every row's files are checked up front."""

    n_src = 2
    COLUMNS = ("mix_id", "s1", "s2", "s1_snr_db_rel_s2")

    def __init__(self, csv_path: str | Path, audio_root: str | Path, sample_rate: int = 8000):
        self.csv_path, self.audio_root, self.sample_rate = Path(csv_path), Path(audio_root), int(sample_rate)
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"{self.csv_path}: no such mixture list")
        with open(self.csv_path, newline="") as f:
            reader = csv.DictReader(f)
            absent = [c for c in self.COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise ValueError(f"{self.csv_path}: missing column(s) {absent}; expected {list(self.COLUMNS)}")
            rows = list(reader)
        if not rows:
            raise ValueError(f"{self.csv_path}: no mixtures listed")
        self.rows, missing = [], []
        for i, row in enumerate(rows):
            where = f"row {i} (CSV line {i + 2})"
            try:
                snr = float(row["s1_snr_db_rel_s2"])
            except (TypeError, ValueError):
                snr = math.nan
            if not math.isfinite(snr):
                raise ValueError(f"{self.csv_path}: {where}: s1_snr_db_rel_s2={row['s1_snr_db_rel_s2']!r} "
                                 f"is not a finite number")
            paths = []
            for column in ("s1", "s2"):
                path = self.audio_root / row[column]   # an absolute name replaces the root
                if not path.is_file():
                    missing.append(f"{where} {column}={path}")
                paths.append(path)
            self.rows.append((row["mix_id"], paths[0], paths[1], snr))
        if missing:
            raise FileNotFoundError(_missing_message(str(self.csv_path), missing, 2 * len(rows)))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        mix_id, p1, p2, snr = self.rows[index]
        s1, s2 = (read_audio(p, self.sample_rate)[0] for p in (p1, p2))
        try:
            mixture, sources = mix_sources(s1, s2, snr)
        except ValueError as err:
            raise ValueError(f"{self.csv_path}: {mix_id} ({p1.name} + {p2.name}): {err}") from err
        return _item(mixture, sources, mix_id)


def _rate_dir(base: Path, sample_rate: int, what: str) -> Path:
    # The folder for the asked rate; otherwise the lowest rate above it (else the highest), resampled on reading.
    present = {}
    for folder in base.glob("wav*k"):
        match = re.fullmatch(r"wav(\d+)k", folder.name)
        if match and folder.is_dir():
            present[int(match[1]) * 1000] = folder
    if not present:
        raise FileNotFoundError(f"{base}: no wav8k/ or wav16k/ folder ({what} layout)")
    above = [rate for rate in present if rate >= sample_rate]
    return present[min(above) if above else max(present)]


def _read_group(paths: list[Path], sample_rate: int, item_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    waves = [read_audio(p, sample_rate)[0] for p in paths]
    lengths = {w.shape[0] for w in waves}
    if len(lengths) > 1:
        detail = ", ".join(f"{p} ({w.shape[0]})" for p, w in zip(paths, waves))
        raise AudioFileError(f"{item_id}: mixture and sources differ in length: {detail}")
    return waves[0], torch.stack(waves[1:])


class _FolderMixtures(SeparationDataset):
    """Pre-made mixtures: ``self.items`` holds (id, mixture path, [source paths])."""

    items: list

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item_id, mix_path, source_paths = self.items[index]
        mixture, sources = _read_group([mix_path, *source_paths], self.sample_rate, item_id)
        return _item(mixture, sources, item_id)


def _scan_split(split_dir: Path, mix_dir: str, n_src: int, what: str) -> list:
    mixes = sorted((split_dir / mix_dir).glob("*.wav"))
    if not mixes:
        raise FileNotFoundError(f"{split_dir / mix_dir}: no .wav mixtures ({what} layout)")
    items, missing = [], []
    for mix in mixes:
        sources = [split_dir / f"s{k + 1}" / mix.name for k in range(n_src)]
        missing += [str(p) for p in sources if not p.is_file()]
        items.append((mix.stem, mix, sources))
    if missing:
        raise FileNotFoundError(_missing_message(str(split_dir), missing, len(mixes) * (n_src + 1)))
    return items


LIBRIMIX_SPLITS = {"train": "train-360", "val": "dev", "test": "test",
                   "train-360": "train-360", "train-100": "train-100", "dev": "dev"}
LIBRIMIX_MIXTURES = ("mix_clean", "mix_both", "mix_single")


class LibriMix(_FolderMixtures):
    """LibriMix as its generation scripts write it:
    ``Libri{n}Mix/wav{8,16}k/{min,max}/{train-360,train-100,dev,test}/{mix_clean,mix_both,mix_single,s1,s2,noise}``
    with ``.../metadata/mixture_<split>_<mixture>.csv`` (mixture_ID, mixture_path, source_k_path, ..., length).

    ``root`` is the folder holding ``Libri{n}Mix`` or that folder itself. Metadata paths are absolute on the
    machine that generated them; one that does not exist as given is looked up under ``root`` (from the
    ``Libri{n}Mix`` part of the path, else its last three parts under the mode folder). Without a metadata CSV
    the split folder is scanned. split: train (= ``train_subset``), val (= dev), test, or a LibriMix name.
    "mix_single" (one speaker + noise, enhancement) needs ``n_src=1``. Noise is never a target source.
    """

    def __init__(self, root: str | Path, split: str, n_src: int = 2, sample_rate: int = 8000, mode: str = "min",
                 mixture: str = "mix_clean", train_subset: str = "train-360"):
        if split not in LIBRIMIX_SPLITS:
            raise ValueError(f"LibriMix split {split!r}: expected one of {sorted(LIBRIMIX_SPLITS)}")
        if mixture not in LIBRIMIX_MIXTURES:
            raise ValueError(f"LibriMix mixture {mixture!r}: expected one of {LIBRIMIX_MIXTURES}")
        if mixture == "mix_single" and n_src != 1:
            raise ValueError("LibriMix mix_single holds one speaker: use n_src=1")
        if mode not in ("min", "max"):
            raise ValueError(f"LibriMix mode {mode!r}: expected 'min' or 'max'")
        self.n_src, self.sample_rate = int(n_src), int(sample_rate)
        name = f"Libri{max(self.n_src, 2)}Mix"   # mix_single lives in Libri2Mix/Libri3Mix as well
        root = Path(root)
        base = root if root.name == name or not (root / name).is_dir() else root / name
        self.mode_dir = _rate_dir(base, self.sample_rate, name) / mode
        self.split = LIBRIMIX_SPLITS[train_subset if split == "train" else split]
        metadata = self.mode_dir / "metadata" / f"mixture_{self.split}_{mixture}.csv"
        if metadata.is_file():
            self.items = self._from_metadata(metadata, base)
        else:
            self.items = _scan_split(self.mode_dir / self.split, mixture, self.n_src, name)

    def _resolve(self, value: str, base: Path) -> Path:
        path = Path(value)
        if path.is_absolute() and path.exists():
            return path
        candidates = [] if path.is_absolute() else [self.mode_dir / path, base.parent / path]
        if base.name in path.parts:
            candidates.append(base.joinpath(*path.parts[path.parts.index(base.name) + 1:]))
        if len(path.parts) >= 3:
            candidates.append(self.mode_dir.joinpath(*path.parts[-3:]))
        return next((c for c in candidates if c.exists()), candidates[-1] if candidates else path)

    def _from_metadata(self, metadata: Path, base: Path) -> list:
        columns = ["mixture_ID", "mixture_path"] + [f"source_{k + 1}_path" for k in range(self.n_src)]
        with open(metadata, newline="") as f:
            reader = csv.DictReader(f)
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent:
                raise ValueError(f"{metadata}: missing column(s) {absent} for n_src={self.n_src}")
            rows = list(reader)
        if not rows:
            raise ValueError(f"{metadata}: no mixtures listed")
        items, missing = [], []
        for i, row in enumerate(rows):
            paths = [self._resolve(row[c], base) for c in columns[1:]]
            missing += [f"row {i} (CSV line {i + 2}) {c}={p}" for c, p in zip(columns[1:], paths) if not p.is_file()]
            items.append((row["mixture_ID"], paths[0], paths[1:]))
        if missing:
            raise FileNotFoundError(_missing_message(str(metadata), missing, len(rows) * len(paths)))
        return items


WSJ0MIX_SPLITS = {"train": "tr", "val": "cv", "test": "tt", "tr": "tr", "cv": "cv", "tt": "tt"}


class WSJ0Mix(_FolderMixtures):
    """wsj0-2mix/3mix as the official scripts write it: ``<root>/wav{8,16}k/{min,max}/{tr,cv,tt}/{mix,s1,s2}``
    (``root`` may also be the folder holding ``{n}speakers/``). split: tr/cv/tt or train/val/test."""

    def __init__(self, root: str | Path, split: str, n_src: int = 2, sample_rate: int = 8000, mode: str = "min"):
        if split not in WSJ0MIX_SPLITS:
            raise ValueError(f"wsj0-mix split {split!r}: expected one of {sorted(WSJ0MIX_SPLITS)}")
        if mode not in ("min", "max"):
            raise ValueError(f"wsj0-mix mode {mode!r}: expected 'min' or 'max'")
        self.n_src, self.sample_rate = int(n_src), int(sample_rate)
        root = Path(root)
        base = root / f"{self.n_src}speakers" if (root / f"{self.n_src}speakers").is_dir() else root
        self.split = WSJ0MIX_SPLITS[split]
        split_dir = _rate_dir(base, self.sample_rate, "wsj0-mix") / mode / self.split
        self.items = _scan_split(split_dir, "mix", self.n_src, "wsj0-mix")


# ---------------------------------------------------------------------------------------------- registry entry points
def fsdd_mixtures(root: str | Path | None = None, split: str = "train", sample_rate: int = 8000,
                  mixtures_per_epoch: int | None = None, snr_range: float = 2.5, seed: int = 0,
                  mixtures_csv: str | Path | None = None, takes=None, stream_fraction: float = 0.0,
                  crop_s: float = 2.0) -> SeparationDataset:
    """FSDD two-speaker mixtures: train -> ``FSDDMixtures`` on takes 10-49 (or ``takes``); val/test ->
    ``MixtureList`` on ``mixtures_csv`` or ``<fsdd>/../separation/mixtures_{split}.csv``. ``root`` is the FSDD
    ``recordings`` folder or its parent. ``stream_fraction``/``crop_s``: see ``FSDDMixtures`` (train only)."""
    recordings = fsdd_recordings_dir(root)
    if split == "train":
        return FSDDMixtures(recordings, FSDD_TRAIN_TAKES if takes is None else takes, sample_rate,
                            mixtures_per_epoch, snr_range, seed, stream_fraction=stream_fraction, crop_s=crop_s)
    if split not in ("val", "test"):
        raise ValueError(f"FSDD mixtures split {split!r}: expected train, val or test")
    csv_path = (resolve_data_path(mixtures_csv) if mixtures_csv is not None
                else recordings.parent.parent / "separation" / f"mixtures_{split}.csv")
    return MixtureList(csv_path, recordings, sample_rate)


def librimix(root: str | Path | None = None, split: str = "train", n_src: int = 2, sample_rate: int = 8000,
             mode: str = "min", mixture: str = "mix_clean", train_subset: str = "train-360") -> LibriMix:
    """LibriMix (root: the folder holding Libri{n}Mix, or it; None: $MTP_DATA_DIR)."""
    if root is None and data_dir() is None:
        raise ValueError("no LibriMix root given and $MTP_DATA_DIR is not set")
    return LibriMix(root if root is not None else data_dir(), split, n_src, sample_rate, mode, mixture, train_subset)


def wsj0mix(root: str | Path | None = None, split: str = "train", n_src: int = 2, sample_rate: int = 8000,
            mode: str = "min") -> WSJ0Mix:
    """wsj0-2mix/3mix (root: the folder holding wav8k/ or {n}speakers/; None: $MTP_DATA_DIR/wsj0-mix)."""
    if root is None and data_dir() is None:
        raise ValueError("no wsj0-mix root given and $MTP_DATA_DIR is not set")
    return WSJ0Mix(root if root is not None else data_dir() / "wsj0-mix", split, n_src, sample_rate, mode)


# ---------------------------------------------------------------------------------------------- long streams
def _track(clips: list[np.ndarray], length: int, pause: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    # One speaker's utterances back to back (a fresh random order on each pass), each followed by a pause.
    out = np.zeros(length)
    pos = int(rng.integers(pause[0], pause[1] + 1))   # the two tracks start apart
    while pos < length:
        for k in rng.permutation(len(clips)):
            clip = clips[k][: length - pos]
            out[pos: pos + clip.size] = clip
            pos += clips[k].size + int(rng.integers(pause[0], pause[1] + 1))
            if pos >= length:
                break
    return out


def _pause_samples(pause_s: tuple[float, float], sample_rate: int) -> tuple[int, int]:
    pause = (int(round(pause_s[0] * sample_rate)), int(round(pause_s[1] * sample_rate)))
    if not 0 <= pause[0] <= pause[1]:
        raise ValueError(f"pause_s must be (low, high) with 0 <= low <= high, got {pause_s}")
    return pause


def _stream(clips_a: list[np.ndarray], clips_b: list[np.ndarray], length: int, pause: tuple[int, int],
            rng: np.random.Generator, snr: float | None = None, snr_range: float = 2.5, level_db: float = LEVEL_DB,
            peak: float = PEAK) -> tuple[torch.Tensor, torch.Tensor]:
    # Each utterance at RMS level_db, A weighted 10^(snr/20) relative to B (snr None: drawn uniform in
    # +-snr_range after both tracks), the peak capped as in mix_sources.
    ref = 10.0 ** (level_db / 20.0)
    tracks = []
    for clips in (clips_a, clips_b):
        levelled = []
        for wave in clips:
            rms = _rms(wave)
            if not rms > 0:
                raise ValueError("a silent utterance (RMS 0) has no level to mix at")
            levelled.append(wave * (ref / rms))
        tracks.append(_track(levelled, length, pause, rng))
    if snr is None:
        snr = float(rng.uniform(-snr_range, snr_range))
    sources = np.stack([tracks[0] * 10.0 ** (snr / 40.0), tracks[1] * 10.0 ** (-snr / 40.0)])
    sources = torch.from_numpy(_cap_peak(sources, peak).astype(np.float32))
    return sources[0] + sources[1], sources


def make_stream(files_a, files_b, duration_s: float, sample_rate: int = 8000, seed: int = 0,
                pause_s: tuple[float, float] = STREAM_PAUSE_S, snr_range: float = 2.5, *, level_db: float = LEVEL_DB,
                peak: float = PEAK) -> tuple[torch.Tensor, torch.Tensor]:
    """A long two-speaker recording: speaker A's utterances (``files_a``) one after another with pauses
    uniform in ``pause_s`` seconds, likewise B's, the two tracks overlapping; each utterance at RMS
    ``level_db``, A weighted 10^(snr/20) relative to B with snr uniform in +-``snr_range`` dB, peak capped as in
    ``mix_sources``. Exactly ``round(duration_s * sample_rate)`` samples (the last utterances are cut there).
    Returns ``(mixture (T,), sources (2, T))`` with ``mixture == sources.sum(0)``.
    """
    if not files_a or not files_b:
        raise ValueError("make_stream needs at least one file for each speaker")
    length = int(round(duration_s * sample_rate))
    if length < 1:
        raise ValueError(f"duration_s={duration_s} gives no samples at {sample_rate} Hz")
    rng = np.random.default_rng(seed)
    pause = _pause_samples(pause_s, sample_rate)
    clips = []
    for files in (files_a, files_b):
        waves = []
        for path in files:
            wave = read_audio(path, sample_rate)[0].numpy().astype(np.float64)
            if not _rms(wave) > 0:
                raise AudioFileError(f"{path}: silent (RMS 0): it has no level to mix at")
            waves.append(wave)
        clips.append(waves)
    return _stream(clips[0], clips[1], length, pause, rng, snr_range=snr_range, level_db=level_db, peak=peak)


class LongStream(SeparationDataset):
    """One ``make_stream`` recording as a one-item dataset (id ``stream``), built on first access."""

    n_src = 2

    def __init__(self, files_a, files_b, duration_s: float, sample_rate: int = 8000, seed: int = 0, **kwargs):
        self.args = (list(files_a), list(files_b), duration_s, int(sample_rate), seed)
        self.kwargs, self.sample_rate, self._made = kwargs, int(sample_rate), None

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        if index not in (0, -1):
            raise IndexError(f"index {index} out of range for one stream")
        if self._made is None:
            self._made = make_stream(*self.args, **self.kwargs)
        return _item(*self._made, "stream")
