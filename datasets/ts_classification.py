"""Time-series classification data: the UEA/UCR archive formats (.ts, .arff, UCR 2018 .tsv) read with aeon's
loaders, single-series CSVs, and a seeded stratified validation split carved from TRAIN.

Series stay as they are in the file: a list of (channels, length) float arrays, NaN where a value is
missing. `SeriesTransform` applies the missing-value policy and the normalisation one series at a time;
`SeriesDataset.collate` zero-pads a batch at the end (to the batch's longest series, or to a model's fixed
length) and returns the mask of real steps.

Missing values (`missing`):
- "interpolate" (default): linear in time within each channel; leading/trailing gaps take the nearest value.
- "zero": NaN -> 0 (what MPTSNet's and thuml's loaders do).
- "error": any NaN is an error naming the file and series.
A series whose channel is entirely NaN is always an error naming it: there is nothing to fill it from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mtp.files import data_dir

ARCHIVE_SUFFIXES = (".ts", ".arff", ".tsv")
SERIES_SUFFIXES = ARCHIVE_SUFFIXES + (".csv",)
UEA_UCR_URL = "https://timeseriesclassification.com/aeon-toolkit/{name}.zip"  # the archive's per-dataset zips


class SeriesFileError(ValueError):
    """A series file the loaders cannot use; the message names the file (and series) and what was expected."""


@dataclass
class SeriesCollection:
    """Series of one file: `series[i]` is (channels, length), `labels[i]` a class name (None: unlabelled)."""

    series: list
    labels: Optional[list]
    class_names: list          # the header's order (UEA/UCR `@classLabel`), else sorted
    source: str

    @property
    def num_channels(self) -> int:
        return self.series[0].shape[0]

    @property
    def lengths(self) -> list[int]:
        return [s.shape[1] for s in self.series]


# ---------------------------------------------------------------------------------------------- reading files
def read_series_file(path: str | Path, label_column: str = "label") -> SeriesCollection:
    """Read a .ts / .arff / .tsv archive file (many series) or a .csv (one series: rows are time steps, numeric
    columns are channels, an optional `label_column`)."""
    path = Path(path)
    if not path.is_file():
        raise SeriesFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv_series(path, label_column)
    if suffix not in ARCHIVE_SUFFIXES:
        raise SeriesFileError(f"{path}: unsupported suffix {suffix!r}; expected one of {', '.join(SERIES_SUFFIXES)}")
    from aeon.datasets import load_from_arff_file, load_from_ts_file, load_from_tsv_file

    class_names = None
    try:
        if suffix == ".ts":
            _check_ts_channels(path)
            x, y, meta = load_from_ts_file(str(path), return_meta_data=True)
            class_names = list(meta.get("class_values") or []) or None
        elif suffix == ".arff":
            x, y = load_from_arff_file(str(path))
        else:
            x, y = load_from_tsv_file(str(path))
    except SeriesFileError:
        raise
    except Exception as err:  # aeon raises IOError/ValueError/IndexError with its own wording
        raise SeriesFileError(f"{path}: not a valid {suffix} file ({type(err).__name__}: {err})") from None
    series = [np.asarray(s, dtype=np.float64) for s in x]  # a 3-D array or a list of (C, T_i) arrays
    if not series:
        raise SeriesFileError(f"{path}: no series in the file")
    if any(s.ndim != 2 for s in series):
        raise SeriesFileError(f"{path}: expected series of shape (channels, length)")
    labels = [str(v) for v in y] if y is not None and len(y) else None
    if class_names is None and labels is not None:
        class_names = sorted(set(labels), key=_natural_key)
    return SeriesCollection(series, labels, class_names or [], str(path))


def _check_ts_channels(path: Path) -> None:
    """aeon reports a series with a missing or extra channel without naming the line: find it first."""
    dims, in_data, has_labels = None, False, False
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            lower = line.lower()
            if not in_data:
                if lower.startswith("@dimensions"):
                    parts = line.split()
                    if len(parts) != 2 or not parts[1].isdigit():
                        raise SeriesFileError(f"{path}:{number}: malformed header {line!r}; expected "
                                              f"'@dimensions <count>'")
                    dims = int(parts[1])
                elif lower.startswith("@classlabel"):
                    has_labels = len(line.split()) > 1 and line.split()[1].lower() == "true"
                elif lower.startswith("@data"):
                    in_data = True
                continue
            found = line.count(":") + 1 - (1 if has_labels else 0)
            if dims is not None and found != dims:
                raise SeriesFileError(f"{path}:{number}: series has {found} channels, the header's @dimensions "
                                      f"says {dims}")


def _read_csv_series(path: Path, label_column: str) -> SeriesCollection:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as err:
        raise SeriesFileError(f"{path}: not a readable CSV ({type(err).__name__}: {err})") from None
    labels = None
    if label_column in frame.columns:
        values = frame[label_column].dropna().astype(str).unique()
        if len(values) != 1:
            raise SeriesFileError(f"{path}: column {label_column!r} must hold one class for the whole series, "
                                  f"found {list(values)[:5]}")
        labels = [values[0]]
        frame = frame.drop(columns=[label_column])
    numeric = frame.select_dtypes(include="number")
    if numeric.shape[1] == 0 or len(numeric) == 0:
        raise SeriesFileError(f"{path}: no numeric columns: expected one column per channel, one row per step")
    return SeriesCollection([numeric.to_numpy(np.float64).T.copy()], labels, labels or [], str(path))


def _natural_key(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


# ---------------------------------------------------------------------------------------------- archive layout
def find_archive_file(root: str | Path | None, name: str, part: str) -> Path:
    """<name>_<TRAIN|TEST>.{ts,arff,tsv} in `root`, `root/<name>/`, or $MTP_DATA_DIR (same two layouts)."""
    part = part.upper()
    places = []
    for base in ([Path(root)] if root is not None else []) + ([data_dir()] if data_dir() is not None else []):
        places += [base, base / name]
    for place in places:
        for suffix in ARCHIVE_SUFFIXES:
            candidate = place / f"{name}_{part}{suffix}"
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(p) for p in places) or "(no root given and $MTP_DATA_DIR unset)"
    raise FileNotFoundError(f"{name}_{part}.ts/.arff/.tsv not found in {looked}. The UEA/UCR archive's files come "
                            f"from {UEA_UCR_URL.format(name=name)}; unpack them there or set data.root")


def check_test_against_train(test: SeriesCollection, train: SeriesCollection) -> None:
    if test.num_channels != train.num_channels:
        raise SeriesFileError(f"{test.source}: {test.num_channels} channels, but {train.source} has "
                              f"{train.num_channels}")
    if test.labels is not None:
        known = set(train.labels or train.class_names)
        unseen = [i for i, label in enumerate(test.labels) if label not in known]
        if unseen:
            raise SeriesFileError(f"{test.source}: class {test.labels[unseen[0]]!r} (series {unseen[0]}) never occurs "
                                  f"in {train.source} (classes {sorted(known, key=_natural_key)})")


# ---------------------------------------------------------------------------------------------- preprocessing
@dataclass
class SeriesTransform:
    """Per-series preprocessing: missing values, then normalisation. Picklable (DataLoader workers)."""

    missing: str = "interpolate"       # interpolate | zero | error
    normalize: str = "none"            # none | series (each series' own channels) | channel (training statistics)
    mean: Optional[list] = None        # per-channel statistics for normalize="channel"
    std: Optional[list] = None

    def __call__(self, x: np.ndarray, where: str) -> np.ndarray:
        x = fill_missing(x, self.missing, where)
        if self.normalize == "series":
            mu = x.mean(axis=1, keepdims=True)
            sd = x.std(axis=1, keepdims=True)
            x = (x - mu) / np.where(sd > 1e-8, sd, 1.0)
        elif self.normalize == "channel":
            x = (x - np.asarray(self.mean)[:, None]) / np.asarray(self.std)[:, None]
        return x


def fill_missing(x: np.ndarray, policy: str, where: str) -> np.ndarray:
    bad = np.isnan(x)
    if not bad.any():
        return x
    empty = np.flatnonzero(bad.all(axis=1))
    if len(empty):
        raise SeriesFileError(f"{where}: channel {int(empty[0])} has no values at all (every step is missing)")
    if policy == "error":
        channel, step = map(int, np.argwhere(bad)[0])
        raise SeriesFileError(f"{where}: missing value at channel {channel}, step {step} (missing='error'; use "
                              f"'interpolate' or 'zero' to fill)")
    if policy == "zero":
        return np.where(bad, 0.0, x)
    steps = np.arange(x.shape[1])
    out = x.copy()
    for c in np.flatnonzero(bad.any(axis=1)):
        known = ~bad[c]
        out[c] = np.interp(steps, steps[known], x[c, known])  # ends take the nearest known value
    return out


def channel_statistics(series: list, missing: str = "interpolate") -> tuple[list, list]:
    """Per-channel mean and std over every real step of every training series."""
    joined = np.concatenate([fill_missing(s, missing, "training data") for s in series], axis=1)
    std = joined.std(axis=1)
    return joined.mean(axis=1).tolist(), np.where(std > 1e-8, std, 1.0).tolist()


def pad_batch(arrays: list, length: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (C, T_i) arrays at the end to `length` (default: the longest) -> x (B, C, T), mask (B, T)."""
    length = length or max(a.shape[1] for a in arrays)
    x = torch.zeros(len(arrays), arrays[0].shape[0], length, dtype=torch.float32)
    mask = torch.zeros(len(arrays), length, dtype=torch.bool)
    for i, a in enumerate(arrays):
        n = min(a.shape[1], length)
        x[i, :, :n] = torch.from_numpy(np.ascontiguousarray(a[:, :n], dtype=np.float32))
        mask[i, :n] = True
    return x, mask


# ---------------------------------------------------------------------------------------------- datasets
class SeriesDataset(torch.utils.data.Dataset):
    """Labelled series with class indices in `class_names` order. The pipeline sets `transform` (missing values,
    normalisation) and `pad_to` (a model's fixed length) before use."""

    def __init__(self, series: list, labels: list, class_names: list, source: str, indices=None):
        self.series, self.class_names, self.source = series, list(class_names), source
        self.indices = list(range(len(series))) if indices is None else list(indices)  # rows of the source file
        lookup = {name: i for i, name in enumerate(self.class_names)}
        self.targets = [lookup[label] for label in labels]
        self.transform: Optional[SeriesTransform] = None
        self.pad_to: Optional[int] = None
        self.full_train: Optional[list] = None  # every series of the TRAIN file (train + val parts)

    def __len__(self):
        return len(self.series)

    def __getitem__(self, i):
        x = self.series[i]
        where = f"{self.source}, series {self.indices[i]}"
        if self.transform is not None:
            x = self.transform(x, where)
        elif np.isnan(x).any():
            x = fill_missing(x, "error", where)
        if self.pad_to is not None and x.shape[1] > self.pad_to:
            raise SeriesFileError(f"{where}: {x.shape[1]} steps, the model takes at most {self.pad_to} (its "
                                  f"seq_length: set options.seq_length to the longest series, or too_long='truncate')")
        return x, self.targets[i]

    def collate(self, batch):
        x, mask = pad_batch([b[0] for b in batch], self.pad_to)
        return {"x": x, "mask": mask, "y": torch.tensor([b[1] for b in batch], dtype=torch.long)}

    @property
    def labels(self) -> list:
        return [self.class_names[t] for t in self.targets]


def stratified_split(labels: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train indices, validation indices): `fraction` of each class (at least one where the class has two or
    more series), drawn with `seed`. Not sklearn's train_test_split(stratify=...): with archive-sized classes
    (a handful of series) that can leave a class out of validation or out of training."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted(set(labels), key=_natural_key):
        members = [i for i, lab in enumerate(labels) if lab == label]
        rng.shuffle(members)
        take = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)
        val += members[:take]
        train += members[take:]
    return sorted(train), sorted(val)


def _labelled(collection: SeriesCollection) -> SeriesCollection:
    if collection.labels is None:
        raise SeriesFileError(f"{collection.source}: the series have no class labels; training and evaluation "
                              f"need them")
    return collection


def split_dataset(train: SeriesCollection, split: str, test: Optional[SeriesCollection], val_fraction: float,
                  val_seed: int) -> SeriesDataset:
    """The train/val/test dataset of one archive: validation is carved from TRAIN, never from TEST."""
    _labelled(train)
    if split == "test":
        check_test_against_train(_labelled(test), train)
        return SeriesDataset(test.series, test.labels, train.class_names, test.source)
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: expected train, val or test")
    train_idx, val_idx = stratified_split(train.labels, val_fraction, val_seed)
    chosen = train_idx if split == "train" else val_idx
    if not chosen:
        raise ValueError(f"{train.source}: the {split} part is empty (val_fraction={val_fraction})")
    part = SeriesDataset([train.series[i] for i in chosen], [train.labels[i] for i in chosen], train.class_names,
                         f"{train.source} ({split} part, val_fraction={val_fraction}, val_seed={val_seed})",
                         indices=chosen)
    part.full_train = train.series
    return part


def archive_split(root: str | Path | None = None, split: str = "train", name: str = "", val_fraction: float = 0.2,
                  val_seed: int = 0) -> SeriesDataset:
    """A UEA/UCR archive dataset by name: <name>_TRAIN / <name>_TEST in `root` (or $MTP_DATA_DIR)."""
    if not name:
        raise ValueError("data.kwargs.name: the archive dataset's name is needed (e.g. BasicMotions)")
    train = read_series_file(find_archive_file(root, name, "TRAIN"))
    test = read_series_file(find_archive_file(root, name, "TEST")) if split == "test" else None
    return split_dataset(train, split, test, val_fraction, val_seed)


def read_csv_folder(folder: Path, label_column: str = "label") -> SeriesCollection:
    files = sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{folder}: no .csv files")
    parts = [read_series_file(p, label_column) for p in files]
    channels = {p.num_channels for p in parts}
    if len(channels) > 1:
        first = next(p for p in parts if p.num_channels != parts[0].num_channels)
        raise SeriesFileError(f"{first.source}: {first.num_channels} channels, but {parts[0].source} has "
                              f"{parts[0].num_channels}")
    unlabelled = [p.source for p in parts if p.labels is None]
    if unlabelled:
        raise SeriesFileError(f"{unlabelled[0]}: no {label_column!r} column (every training/test CSV needs one)")
    labels = [p.labels[0] for p in parts]
    return SeriesCollection([p.series[0] for p in parts], labels, sorted(set(labels), key=_natural_key), str(folder))


def csv_folder_split(root: str | Path, split: str = "train", label_column: str = "label", val_fraction: float = 0.2,
                     val_seed: int = 0) -> SeriesDataset:
    """A folder with `train/` and `test/` subfolders of CSVs, one series per file with a label column. A `val/`
    subfolder, when present, is the validation split; otherwise validation is carved from train."""
    root = Path(root)

    def sub(name):
        for candidate in (name, name.upper(), name.capitalize()):
            if (root / candidate).is_dir():
                return root / candidate
        return None

    train_dir = sub("train")
    if train_dir is None:
        raise FileNotFoundError(f"{root}: expected a train/ folder of CSV files (and test/)")
    train = read_csv_folder(train_dir, label_column)
    if split == "val" and sub("val") is not None:
        own = read_csv_folder(sub("val"), label_column)
        check_test_against_train(own, train)
        return SeriesDataset(own.series, own.labels, train.class_names, own.source)
    if split == "train" and sub("val") is not None:
        return SeriesDataset(train.series, train.labels, train.class_names, train.source)
    test = None
    if split == "test":
        if sub("test") is None:
            raise FileNotFoundError(f"{root}: no test/ folder")
        test = read_csv_folder(sub("test"), label_column)
    return split_dataset(train, split, test, val_fraction, val_seed)
