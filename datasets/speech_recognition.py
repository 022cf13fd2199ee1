"""Speech recognition data: utterance lists read from the common on-disk layouts, FSDD digits and seeded FSDD
digit strings.

Every dataset returns ``{"audio": (T,), "text": str, "id": str}`` (float32 mono at the dataset's sample rate,
the transcript as written in the source) and has ``collate(batch)``, which zero-pads at the end and returns
``{"audio": (B, T), "lengths": (B,), "texts": [...], "ids": [...]}``. Text normalisation and tokenisation are
the pipeline's (one place for training targets and scoring).

Layouts (each reader checks every line before any audio is read, and names the file and line of a bad one):
- LibriSpeech: ``<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` lines ``<utt-id> <TEXT>`` with
  ``<utt-id>.flac`` (or .wav) beside it; the root may be any folder above them (a subset or the corpus).
- NeMo manifest: JSON lines ``{"audio_filepath", "duration", "text"[, "offset"]}``; relative paths are resolved
  against the manifest's folder.
- Kaldi data dir: ``wav.scp`` (``<utt-id> <path>``; piped commands ``... |`` are refused) and ``text``
  (``<utt-id> <words>``); every ``wav.scp`` id needs a transcript. ``segments`` is not supported.
- SpeechBrain CSV: columns ``ID,duration,wav,spk_id,wrd`` with ``$data_root`` (or ``{data_root}``) in paths.
- FSDD: ``{digit}_{speaker}_{take}.wav``; takes 0-4 are the test set, 5-49 train; the transcript is the digit's
  English word ("zero" ... "nine").
- FSDD digit strings: 2-7 digits of ONE speaker (a person reading a number aloud), drawn from the same takes,
  joined with pauses uniform in ``pause_s``; seeded by (seed, epoch, index), so the test set is fixed and the
  training set redrawn every epoch.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mtp.datasets.audio import AudioFileError, read_audio
from mtp.datasets.fsdd import fsdd_files, fsdd_recordings_dir
from mtp.files import data_dir, resolve_data_path

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_TEST_TAKES = range(0, 5)
FSDD_TRAIN_TAKES = range(5, 50)
STRING_PAUSE_S = (0.05, 0.3)
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")


class TranscriptError(ValueError):
    """A transcript or manifest line that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: Path
    text: str
    offset: float = 0.0                 # seconds into the file (NeMo manifests)
    duration: float | None = None       # seconds; None: to the end of the file


class ASRDataset(Dataset):
    """Utterances read on access (resampled to ``sample_rate``, downmixed); decoded audio optionally cached."""

    def __init__(self, utterances: list[Utterance], sample_rate: int = 16000, source: str = "", cache: bool = False):
        if not utterances:
            raise ValueError(f"{source or 'dataset'}: no utterances")
        self.utterances, self.sample_rate, self.source = list(utterances), int(sample_rate), source
        self.cache = cache
        self._waves: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.utterances)

    def audio(self, index: int) -> torch.Tensor:
        if index in self._waves:
            return self._waves[index]
        utt = self.utterances[index]
        wave, _ = read_audio(utt.audio, self.sample_rate)
        if utt.offset or utt.duration is not None:
            start = int(round(utt.offset * self.sample_rate))
            stop = None if utt.duration is None else start + int(round(utt.duration * self.sample_rate))
            wave = wave[start:stop]
            if wave.numel() == 0:
                raise AudioFileError(f"{utt.audio}: utterance {utt.id} (offset {utt.offset} s, duration "
                                     f"{utt.duration} s) lies past the end of the file")
        if self.cache:
            self._waves[index] = wave
        return wave

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        return {"audio": self.audio(index), "text": utt.text, "id": utt.id}

    @staticmethod
    def collate(batch: list[dict]) -> dict:
        lengths = torch.tensor([item["audio"].shape[-1] for item in batch], dtype=torch.long)
        audio = torch.zeros(len(batch), int(lengths.max()))
        for i, item in enumerate(batch):
            audio[i, : item["audio"].shape[-1]] = item["audio"]
        return {"audio": audio, "lengths": lengths, "texts": [item["text"] for item in batch],
                "ids": [item["id"] for item in batch]}


# ---------------------------------------------------------------------------------------------- layouts
def _check_audio_exists(path: Path, where: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: audio file {path} does not exist")
    return path


def _check_text(text: str, where: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise TranscriptError(f"{where}: empty transcript")
    return text


def librispeech_utterances(root: str | Path) -> list[Utterance]:
    """Every ``*.trans.txt`` under ``root`` (sorted), each line an utterance with its audio beside it."""
    root = Path(root)
    files = sorted(root.rglob("*.trans.txt"))
    if not files:
        raise FileNotFoundError(f"{root}: no LibriSpeech *.trans.txt transcripts under it")
    found = []
    for trans in files:
        listed = set()
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{trans}:{number}"
            utt_id, _, text = line.strip().partition(" ")
            audio = next((trans.parent / f"{utt_id}{s}" for s in AUDIO_SUFFIXES
                          if (trans.parent / f"{utt_id}{s}").is_file()), None)
            if audio is None:
                raise FileNotFoundError(f"{where}: no audio for utterance {utt_id} (looked for {utt_id}.flac/.wav "
                                        f"in {trans.parent})")
            found.append(Utterance(utt_id, audio, _check_text(text, f"{where} ({utt_id})")))
            listed.add(utt_id)
        unlisted = sorted(p.stem for p in trans.parent.iterdir()
                          if p.suffix in AUDIO_SUFFIXES and p.stem not in listed)
        if unlisted:  # a transcript with an utterance missing: refused rather than silently skipped
            raise TranscriptError(f"{trans}: no transcript line for utterance(s) {', '.join(unlisted[:5])}"
                                  f"{' ...' if len(unlisted) > 5 else ''} whose audio is in {trans.parent}")
    return found


def nemo_manifest_utterances(manifest: str | Path, min_duration: float | None = None,
                             max_duration: float | None = None) -> list[Utterance]:
    """A NeMo JSON-lines manifest; utterances outside [min_duration, max_duration] are left out, as NeMo's
    loader does."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such manifest")
    found = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TranscriptError(f"{where}: not a JSON object ({err})") from None
        if not isinstance(row, dict):
            raise TranscriptError(f"{where}: expected a JSON object, found {type(row).__name__}")
        missing = [k for k in ("audio_filepath", "text") if k not in row]
        if missing:
            raise TranscriptError(f"{where}: missing key(s) {missing} (a NeMo manifest line holds audio_filepath, "
                                  f"duration, text)")
        duration = row.get("duration")
        if duration is not None and not (isinstance(duration, (int, float)) and duration > 0):
            raise TranscriptError(f"{where}: duration {duration!r} is not a positive number of seconds")
        if duration is not None and ((min_duration is not None and duration < min_duration) or
                                     (max_duration is not None and duration > max_duration)):
            continue
        path = Path(str(row["audio_filepath"]))
        path = path if path.is_absolute() else manifest.parent / path
        utt_id = str(row.get("utt_id") or row.get("id") or Path(str(row["audio_filepath"])).stem)
        offset = float(row.get("offset") or 0.0)
        found.append(Utterance(utt_id, _check_audio_exists(path, where), _check_text(str(row["text"]), where),
                               offset, float(duration) if offset and duration is not None else None))
    if not found:
        raise ValueError(f"{manifest}: no utterances (empty, or all outside the duration limits)")
    return found


def _kaldi_table(path: Path) -> dict[str, tuple[str, int]]:
    table = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if key in table:
            raise TranscriptError(f"{path}:{number}: utterance id {key} appears twice (also line {table[key][1]})")
        table[key] = (value.strip(), number)
    return table


def kaldi_utterances(folder: str | Path) -> list[Utterance]:
    """A Kaldi data directory: ``wav.scp`` + ``text`` (sorted by utterance id)."""
    folder = Path(folder)
    scp, text_file = folder / "wav.scp", folder / "text"
    missing = [p.name for p in (scp, text_file) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a Kaldi data dir (missing {', '.join(missing)})")
    if (folder / "segments").is_file():
        raise ValueError(f"{folder / 'segments'}: Kaldi segments are not supported; give one file per utterance")
    wavs, texts = _kaldi_table(scp), _kaldi_table(text_file)
    found = []
    for utt_id, (value, number) in sorted(wavs.items()):
        where = f"{scp}:{number}"
        if not value:
            raise TranscriptError(f"{where}: utterance {utt_id} has no audio path")
        if value.endswith("|"):
            raise ValueError(f"{where}: utterance {utt_id} is a piped command ({value}); only plain file paths are "
                             f"supported: write the audio to files first (e.g. with Kaldi's wav-copy)")
        if utt_id not in texts:
            raise TranscriptError(f"{text_file}: no transcript for utterance {utt_id} (listed in {where})")
        text, text_line = texts[utt_id]
        path = Path(value) if Path(value).is_absolute() else folder / value
        if not path.is_file() and not Path(value).is_absolute() and Path(value).is_file():
            path = Path(value)  # Kaldi paths are relative to the recipe folder, often the working directory
        found.append(Utterance(utt_id, _check_audio_exists(path, where),
                               _check_text(text, f"{text_file}:{text_line} ({utt_id})")))
    if not found:
        raise ValueError(f"{scp}: no utterances")
    return found


SPEECHBRAIN_COLUMNS = ("ID", "wav", "wrd")


def speechbrain_utterances(csv_path: str | Path, data_root: str | Path | None = None) -> list[Utterance]:
    """A SpeechBrain CSV (``ID,duration,wav,spk_id,wrd``); ``$data_root`` in paths is ``data_root`` (default: the
    CSV's folder)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such CSV")
    root = str(Path(data_root) if data_root is not None else csv_path.parent)
    found = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        absent = [c for c in SPEECHBRAIN_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise TranscriptError(f"{csv_path}: missing column(s) {absent}; a SpeechBrain ASR CSV has "
                                  f"ID,duration,wav,spk_id,wrd (found {reader.fieldnames})")
        for number, row in enumerate(reader, 2):
            where = f"{csv_path}:{number}"
            if None in row.values() or None in row:
                raise TranscriptError(f"{where}: the row's number of fields differs from the header's "
                                      f"({len(reader.fieldnames)})")
            value = row["wav"].replace("$data_root", root).replace("{data_root}", root)
            path = Path(value) if Path(value).is_absolute() else csv_path.parent / value
            found.append(Utterance(row["ID"], _check_audio_exists(path, where), _check_text(row["wrd"], where)))
    if not found:
        raise ValueError(f"{csv_path}: no utterances")
    return found


def parse_takes(takes, default) -> list[int]:
    """None -> default; "5-49" or "0-4,7" or a list of ints -> the takes."""
    if takes is None:
        return list(default)
    if isinstance(takes, str):
        out = []
        for part in takes.split(","):
            match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not match:
                raise ValueError(f"takes {takes!r}: expected ranges such as '5-49' or '0-4,7'")
            low, high = int(match[1]), int(match[2] or match[1])
            out += list(range(low, high + 1))
        return out
    return [int(t) for t in takes]


def fsdd_utterances(root: str | Path | None, takes) -> list[Utterance]:
    return [Utterance(f.path.stem, f.path, DIGIT_WORDS[f.digit]) for f in fsdd_files(root, takes)]


class FSDDDigitStrings(ASRDataset):
    """Strings of ``lengths`` (inclusive range) digits read by one speaker, from FSDD ``takes`` (see module
    docstring). ``num_items`` items per epoch; the decoded clips are cached. ``single_fraction`` of the items
    are one digit alone (the rest uniform in ``lengths``), so a model also hears isolated words. Training
    augmentation: for an ``edge_pause_fraction`` share of the items, silence uniform in ``edge_pause_s`` before and
    after the item (each side drawn on its own; the rest start and end on speech, as a trimmed clip does),
    each clip's speed changed by a factor drawn from ``speed_factors`` (resampling: pitch moves with it), and its
    tempo by a factor drawn from ``tempo_factors`` (torchaudio's phase vocoder: pitch kept, so a speaker's fast
    takes are imitated without changing his voice)."""

    def __init__(self, root: str | Path | None, takes, sample_rate: int = 16000, num_items: int = 300,
                 lengths: tuple[int, int] = (2, 7), pause_s: tuple[float, float] = STRING_PAUSE_S, seed: int = 0,
                 redraw_each_epoch: bool = False, single_fraction: float = 0.0,
                 edge_pause_s: tuple[float, float] = (0.0, 0.0), edge_pause_fraction: float = 1.0,
                 speed_factors: tuple[float, ...] = (1.0,), tempo_factors: tuple[float, ...] = (1.0,)):
        utterances = fsdd_utterances(root, takes)
        super().__init__(utterances, sample_rate, source=f"FSDD takes {takes}", cache=True)
        if not 1 <= lengths[0] <= lengths[1]:
            raise ValueError(f"lengths must be (low, high) with 1 <= low <= high, got {lengths}")
        if not 0 <= pause_s[0] <= pause_s[1]:
            raise ValueError(f"pause_s must be (low, high) with 0 <= low <= high seconds, got {pause_s}")
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if not 0.0 <= single_fraction <= 1.0:
            raise ValueError(f"single_fraction must be in [0, 1], got {single_fraction}")
        if len(edge_pause_s) != 2 or not 0 <= edge_pause_s[0] <= edge_pause_s[1]:
            raise ValueError(f"edge_pause_s must be (low, high) with 0 <= low <= high seconds, got {edge_pause_s}")
        if not 0.0 <= edge_pause_fraction <= 1.0:
            raise ValueError(f"edge_pause_fraction must be in [0, 1], got {edge_pause_fraction}")
        if not speed_factors or not all(0.5 <= f <= 2.0 for f in speed_factors):
            raise ValueError(f"speed_factors must be a non-empty list of factors in [0.5, 2], got {speed_factors}")
        if not tempo_factors or not all(0.5 <= f <= 2.0 for f in tempo_factors):
            raise ValueError(f"tempo_factors must be a non-empty list of factors in [0.5, 2], got {tempo_factors}")
        self.tempo_factors = tuple(float(f) for f in tempo_factors)
        self.single_fraction = float(single_fraction)
        self.edge_pause_s, self.speed_factors = tuple(edge_pause_s), tuple(float(f) for f in speed_factors)
        self.edge_pause_fraction = float(edge_pause_fraction)
        speakers = sorted({u.id.split("_")[1] for u in utterances})
        self._by_speaker = [np.array([i for i, u in enumerate(utterances) if u.id.split("_")[1] == s])
                            for s in speakers]
        self.num_items, self.lengths, self.pause_s, self.seed = int(num_items), tuple(lengths), tuple(pause_s), seed
        self.redraw_each_epoch, self.epoch = redraw_each_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        if self.redraw_each_epoch:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def draw(self, index: int) -> tuple[list[int], list[int]]:
        """(clip indices, pause lengths in samples) of item ``index``: a pure function of (seed, epoch, index)."""
        return self._draw(index)[:2]

    def _draw(self, index: int):
        # the augmentation is drawn from the same generator afterwards, so it leaves the items' digits unchanged
        rng = np.random.default_rng((self.seed, self.epoch, index))
        pool = self._by_speaker[int(rng.integers(len(self._by_speaker)))]
        count = int(rng.integers(self.lengths[0], self.lengths[1] + 1))
        if self.single_fraction and rng.random() < self.single_fraction:
            count = 1
        clips = [int(c) for c in rng.choice(pool, size=count, replace=count > len(pool))]
        low, high = (int(round(p * self.sample_rate)) for p in self.pause_s)
        return clips, [int(p) for p in rng.integers(low, high + 1, size=count - 1)], rng

    def augmentation(self, rng, count: int) -> tuple[tuple[int, int], list[float], list[float]]:
        """((leading, trailing) silence in samples, a speed factor per clip, a tempo factor per clip), drawn after
        ``draw``'s values (each only when that augmentation is on, so turning one on leaves the others' draws)."""
        low, high = (int(round(p * self.sample_rate)) for p in self.edge_pause_s)
        edges = (0, 0)
        if high > 0 and rng.random() < self.edge_pause_fraction:
            edges = tuple(int(e) for e in rng.integers(low, high + 1, size=2))
        speeds = ([1.0] * count if self.speed_factors == (1.0,)
                  else [float(f) for f in rng.choice(self.speed_factors, size=count)])
        tempos = ([1.0] * count if self.tempo_factors == (1.0,)
                  else [float(f) for f in rng.choice(self.tempo_factors, size=count)])
        return edges, speeds, tempos

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} digit strings")
        clips, pauses, rng = self._draw(index)
        (lead, trail), speeds, tempos = self.augmentation(rng, len(clips))
        parts = [torch.zeros(lead)]
        for k, clip in enumerate(clips):
            wave = self.audio(clip)
            if speeds[k] != 1.0:
                import torchaudio.functional   # only training with speed perturbation needs it here

                wave = torchaudio.functional.speed(wave[None], self.sample_rate, speeds[k])[0][0]
            if tempos[k] != 1.0:
                wave = change_tempo(wave, tempos[k], self.sample_rate)
            parts.append(wave)
            if k < len(pauses):
                parts.append(torch.zeros(pauses[k]))
        parts.append(torch.zeros(trail))
        text = " ".join(self.utterances[c].text for c in clips)
        return {"audio": torch.cat(parts), "text": text, "id": f"string{self.epoch}_{index:05d}"}


def change_tempo(wave: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """``wave`` (T,) played ``factor`` times faster at the same pitch: torchaudio's phase vocoder on a 32 ms /
    8 ms STFT. The result has about T / factor samples."""
    import torchaudio.functional   # training with tempo perturbation only

    n_fft = 1 << max(6, int(round(0.032 * sample_rate)) - 1).bit_length()
    if wave.numel() <= n_fft // 2:   # the centred STFT's reflect padding needs more
        raise ValueError(f"change_tempo: {wave.numel()} samples at {sample_rate} Hz; needs more than {n_fft // 2}")
    hop = n_fft // 4
    window = torch.hann_window(n_fft)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * hop, spec.shape[0])[:, None]
    stretched = torchaudio.functional.phase_vocoder(spec, factor, advance)
    return torch.istft(stretched, n_fft, hop, window=window, length=int(round(wave.numel() / factor)))


def fsdd_recording(root: str | Path | None, takes=FSDD_TEST_TAKES, duration_s: float = 600.0,
                   sample_rate: int = 16000, pause_s: tuple[float, float] = STRING_PAUSE_S,
                   seed: int = 0) -> tuple[torch.Tensor, str]:
    """A long recording: FSDD clips of ``takes`` (all speakers) in seeded random order, passes repeated until
    ``duration_s``, separated by pauses uniform in ``pause_s``; the last clip that fits ends it (no cut word,
    at most ``duration_s``). Returns (wave (T,), the digit words said)."""
    data = ASRDataset(fsdd_utterances(_fsdd_root(root), parse_takes(takes, FSDD_TEST_TAKES)), sample_rate,
                      cache=True)
    rng = np.random.default_rng(seed)
    low, high = (int(round(p * sample_rate)) for p in pause_s)
    limit, parts, words, total = int(round(duration_s * sample_rate)), [], [], 0
    while True:
        for index in rng.permutation(len(data)):
            clip = data.audio(int(index))
            pause = int(rng.integers(low, high + 1))
            if total + clip.shape[0] > limit:
                if not parts:
                    raise ValueError(f"duration_s={duration_s} is shorter than one clip")
                return torch.cat(parts[:-1]), " ".join(words)   # ends with the last word
            parts += [clip, torch.zeros(pause)]
            words.append(data.utterances[int(index)].text)
            total += clip.shape[0] + pause


# ---------------------------------------------------------------------------------------------- registry entry points
def _need_root(root, what: str) -> Path:
    if root is None:
        raise ValueError(f"{what}: no root given (data.root)")
    path = resolve_data_path(root)
    if not path.exists():
        raise FileNotFoundError(f"{what}: {root} does not exist")
    return path


def librispeech(root: str | Path | None = None, split: str = "test", sample_rate: int = 16000,
                subset: str | None = None) -> ASRDataset:
    """LibriSpeech: ``root`` is a subset folder (test-clean) or the folder holding subsets, then ``subset``
    (default: the split's usual one: train -> train-clean-100, val -> dev-clean, test -> test-clean) is used
    when it exists under ``root``."""
    path = _need_root(root, "librispeech")
    default = {"train": "train-clean-100", "val": "dev-clean", "test": "test-clean"}.get(split, split)
    for candidate in (path / (subset or default), path / "LibriSpeech" / (subset or default)):
        if candidate.is_dir():
            path = candidate
            break
    else:
        if subset is not None:
            raise FileNotFoundError(f"librispeech: no subset {subset} under {path}")
    return ASRDataset(librispeech_utterances(path), sample_rate, source=str(path))


def nemo_manifest(root: str | Path | None = None, split: str = "test", sample_rate: int = 16000,
                  manifest=None, min_duration: float | None = None,
                  max_duration: float | None = None) -> ASRDataset:
    """NeMo manifests: ``manifest`` (one path, a list, or comma-separated as NeMo takes them; relative to ``root``),
    else ``root`` itself when it is a file, else ``<root>/<split>_manifest.json``."""
    path = _need_root(root, "nemo_manifest") if root is not None else None
    if manifest is not None:
        names = [m.strip() for m in manifest.split(",")] if isinstance(manifest, str) else [str(m) for m in manifest]
        targets = [resolve_data_path(m) if path is None or Path(m).is_absolute() else path / m for m in names]
    elif path is not None and path.is_file():
        targets = [path]
    elif path is not None:
        targets = [path / f"{split}_manifest.json"]
    else:
        raise ValueError("nemo_manifest: give data.root or data.kwargs.manifest")
    utterances = [u for target in targets for u in nemo_manifest_utterances(target, min_duration, max_duration)]
    return ASRDataset(utterances, sample_rate, source=", ".join(map(str, targets)))


def kaldi(root: str | Path | None = None, split: str = "test", sample_rate: int = 16000,
          folder: str | None = None) -> ASRDataset:
    """A Kaldi data dir: ``root`` itself when it has wav.scp, else ``<root>/<folder or split>``."""
    path = _need_root(root, "kaldi")
    target = path if (path / "wav.scp").is_file() else path / (folder or split)
    return ASRDataset(kaldi_utterances(target), sample_rate, source=str(target))


def speechbrain_csv(root: str | Path | None = None, split: str = "test", sample_rate: int = 16000,
                    csv_file: str | None = None, data_root: str | None = None) -> ASRDataset:
    """A SpeechBrain CSV: ``root`` when it is a file, else ``<root>/<csv_file or split.csv>``."""
    path = _need_root(root, "speechbrain_csv")
    target = path if path.is_file() else path / (csv_file or f"{split}.csv")
    return ASRDataset(speechbrain_utterances(target, data_root), sample_rate, source=str(target))


def _fsdd_root(root) -> Path:
    if root is None and data_dir() is None:
        raise ValueError("no FSDD root given and $MTP_DATA_DIR is not set")
    return fsdd_recordings_dir(root)


def fsdd_digits(root: str | Path | None = None, split: str = "test", sample_rate: int = 16000,
                takes=None) -> ASRDataset:
    """Isolated FSDD digits: test = takes 0-4 (300 files), train = takes 5-49; ``takes`` ("10-49", a list)
    overrides; ``val`` needs ``takes``."""
    if split == "val" and takes is None:
        raise ValueError("fsdd_digits: the val split has no default takes; give data.splits.val.kwargs.takes "
                         "(e.g. '5-9', then train on '10-49')")
    default = FSDD_TEST_TAKES if split == "test" else FSDD_TRAIN_TAKES
    chosen = parse_takes(takes, default)
    return ASRDataset(fsdd_utterances(_fsdd_root(root), chosen), sample_rate, source=f"FSDD takes {takes or split}",
                      cache=split == "train")


def fsdd_digit_strings(root: str | Path | None = None, split: str = "test", sample_rate: int = 16000,
                       takes=None, num_items: int | None = None, min_digits: int = 2, max_digits: int = 7,
                       pause_s: tuple[float, float] = STRING_PAUSE_S, seed: int = 0,
                       single_fraction: float = 0.0, edge_pause_s: tuple[float, float] = (0.0, 0.0),
                       edge_pause_fraction: float = 1.0, speed_factors: tuple[float, ...] = (1.0,),
                       tempo_factors: tuple[float, ...] = (1.0,)) -> FSDDDigitStrings:
    """FSDD digit strings (test: takes 0-4, 300 strings, fixed; train: takes 5-49, 2700 strings an epoch,
    redrawn every epoch)."""
    if split == "val" and takes is None:
        raise ValueError("fsdd_digit_strings: the val split has no default takes; give its kwargs.takes")
    default = FSDD_TEST_TAKES if split == "test" else FSDD_TRAIN_TAKES
    chosen = parse_takes(takes, default)
    items = num_items if num_items is not None else (300 if split != "train" else 2700)
    return FSDDDigitStrings(_fsdd_root(root), chosen, sample_rate, items, (min_digits, max_digits), tuple(pause_s),
                            seed + (0 if split == "test" else 1000 if split == "val" else 2000),
                            redraw_each_epoch=split == "train", single_fraction=single_fraction,
                            edge_pause_s=tuple(edge_pause_s), edge_pause_fraction=edge_pause_fraction,
                            speed_factors=tuple(speed_factors), tempo_factors=tuple(tempo_factors))
