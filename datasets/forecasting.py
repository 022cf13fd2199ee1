"""Forecasting data: CSV validation, thuml time features, stride-1 windows and the standard splits.

The split/scaling protocol follows thuml's long-term forecasting code (Autoformer, iTransformer,
Time-Series-Library) so that numbers are comparable with the papers:

* ETTh1/ETTh2: train rows [0, 8640), val [8640-L, 11520), test [11520-L, 14400); ETTm1/ETTm2 x4.
* any other CSV: 70/10/20 chronological, columns reordered to [date, others..., target].
* z-score with mean/std (ddof 0) of the TRAIN rows only, computed in float64.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from mtp.files import cache_dir, data_dir, fetch

# The ETTh1 hash was computed from the copy in ../shared/data/ett (byte-identical to the repository file).
# No copy of ETTh2/ETTm1/ETTm2 is available offline, so their hashes are unknown: the first download of
# those files cannot be verified and is trusted as-is (TLS only).
ETT_URLS: dict[str, tuple[str, str | None]] = {
    "ETTh1": ("https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv",
              "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"),
    "ETTh2": ("https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh2.csv", None),
    "ETTm1": ("https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTm1.csv", None),
    "ETTm2": ("https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTm2.csv", None),
}


# Rows per month in the ETT protocol (thuml counts 30-day months): hourly, and 15-minute data (x4).
_ETT_MONTH_ROWS = {"ETTh1": 30 * 24, "ETTh2": 30 * 24, "ETTm1": 30 * 24 * 4, "ETTm2": 30 * 24 * 4}


# --------------------------------------------------------------------------------------------------
# Reading and validating a frame
# --------------------------------------------------------------------------------------------------

def _where(source: str, row: int) -> str:
    # Row numbers are 0-based data rows; the CSV line adds the header line and 1-based counting.
    return f"{source}: row {row} (CSV line {row + 2})"


def load_frame(path_or_df, date_col: str = "date", *, target: str | None = None,
               fill: str | None = None, freq: str | None = None) -> pd.DataFrame:
    """Read a forecasting CSV (or take a DataFrame) and check it is a clean, regular time series.

    Returns a copy with `date_col` parsed to datetime64 and every other column float64, in the file's
    order. The inferred pandas frequency is stored in `frame.attrs["freq"]`.
    fill=None rejects missing cells; fill="interpolate" fills them linearly in time (ends: nearest).
    freq, when given, is the expected pandas frequency (e.g. "h", "15min"); otherwise it is inferred.
    """
    if isinstance(path_or_df, pd.DataFrame):
        source, frame = "<DataFrame>", path_or_df.copy()
    else:
        path = Path(path_or_df)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{source}: no such file")
        frame = pd.read_csv(path)
    if fill not in (None, "interpolate"):
        raise ValueError(f"fill={fill!r}: expected None or 'interpolate'")
    if date_col not in frame.columns:
        raise ValueError(f"{source}: no date column {date_col!r}; columns are {list(frame.columns)}")
    if target is not None and target not in frame.columns:
        raise ValueError(f"{source}: target column {target!r} not found; columns are {list(frame.columns)}")
    if len(frame) < 3:
        raise ValueError(f"{source}: {len(frame)} rows; a time series needs at least 3")

    raw_dates = frame[date_col]
    dates = pd.to_datetime(raw_dates, errors="coerce")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"{_where(source, row)}: column {date_col!r} value {raw_dates.iloc[row]!r} "
                         f"is not a date ({len(bad)} such rows)")
    frame[date_col] = dates

    for col in frame.columns:
        if col == date_col:
            continue
        values = pd.to_numeric(frame[col], errors="coerce")
        not_numeric = np.flatnonzero((values.isna() & frame[col].notna()).to_numpy())
        if len(not_numeric):
            row = int(not_numeric[0])
            raise ValueError(f"{_where(source, row)}: column {col!r} value {frame[col].iloc[row]!r} is not "
                             f"numeric ({len(not_numeric)} such cells in this column)")
        frame[col] = values.astype(np.float64)

    _check_order(frame[date_col], source)
    inferred = _check_regular(frame[date_col], source, freq)
    frame.attrs["freq"] = inferred

    value_cols = [c for c in frame.columns if c != date_col]
    missing = frame[value_cols].isna().to_numpy()
    if missing.any():
        if fill is None:
            row, col = np.argwhere(missing)[0]
            raise ValueError(f"{_where(source, int(row))}: column {value_cols[col]!r} is empty "
                             f"({int(missing.sum())} empty cells); pass fill='interpolate' to fill gaps")
        frame[value_cols] = frame[value_cols].interpolate(method="linear", limit_direction="both")
    return frame


def _check_order(dates: pd.Series, source: str) -> None:
    steps = np.diff(dates.to_numpy().astype("datetime64[ns]").astype(np.int64))
    bad = np.flatnonzero(steps <= 0)
    if len(bad):
        row = int(bad[0]) + 1
        kind = "duplicates" if steps[bad[0]] == 0 else "is earlier than"
        raise ValueError(f"{_where(source, row)}: timestamp {dates.iloc[row]} {kind} the previous row "
                         f"({dates.iloc[row - 1]}); timestamps must be strictly increasing")


def _check_regular(dates: pd.Series, source: str, freq: str | None) -> str:
    index = pd.DatetimeIndex(dates)
    expected = freq or pd.infer_freq(index)
    if expected is None:
        # Guess the intended step from the head of the series (calendar steps such as months), else
        # from the most common gap, then report the first row that breaks it.
        head = pd.infer_freq(index[: min(len(index), 50)]) if len(index) >= 3 else None
        expected = head or pd.tseries.frequencies.to_offset(pd.Series(index).diff().mode().iloc[0]).freqstr
    grid = pd.date_range(index[0], periods=len(index), freq=expected)
    off = np.flatnonzero(grid != index)
    if len(off):
        row = int(off[0])
        raise ValueError(f"{_where(source, row)}: timestamp {index[row]} breaks the regular frequency "
                         f"{expected!r} (expected {grid[row]}); resample or fix the file")
    return expected


# --------------------------------------------------------------------------------------------------
# thuml `timeF` time features
# --------------------------------------------------------------------------------------------------

# Each feature maps a calendar field to [-0.5, 0.5] with the divisor thuml (after GluonTS) uses.
_TIME_FEATURES = {
    "second_of_minute": lambda ix: ix.second / 59.0 - 0.5,
    "minute_of_hour": lambda ix: ix.minute / 59.0 - 0.5,
    "hour_of_day": lambda ix: ix.hour / 23.0 - 0.5,
    "day_of_week": lambda ix: ix.dayofweek / 6.0 - 0.5,
    "day_of_month": lambda ix: (ix.day - 1) / 30.0 - 0.5,
    "day_of_year": lambda ix: (ix.dayofyear - 1) / 365.0 - 0.5,
    "month_of_year": lambda ix: (ix.month - 1) / 11.0 - 0.5,
    "week_of_year": lambda ix: (ix.isocalendar().week.to_numpy() - 1) / 52.0 - 0.5,
}

_FEATURES_BY_UNIT = {
    "second": ["second_of_minute", "minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"],
    "minute": ["minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"],
    "hour": ["hour_of_day", "day_of_week", "day_of_month", "day_of_year"],
    "day": ["day_of_week", "day_of_month", "day_of_year"],
    "business_day": ["day_of_week", "day_of_month", "day_of_year"],
    "week": ["day_of_month", "week_of_year"],
    "month": ["month_of_year"],
    "quarter": ["month_of_year"],
    "year": [],
}

# thuml letters and pandas aliases (case-insensitive; 'ms' is month start, not milliseconds, as in thuml).
_UNIT_ALIASES = {
    "s": "second", "sec": "second", "second": "second",
    "t": "minute", "min": "minute", "minute": "minute",
    "h": "hour", "hour": "hour",
    "d": "day", "day": "day",
    "b": "business_day", "bday": "business_day",
    "w": "week", "week": "week",
    "m": "month", "me": "month", "ms": "month", "bm": "month", "bme": "month", "bms": "month", "month": "month",
    "q": "quarter", "qe": "quarter", "qs": "quarter", "bq": "quarter", "quarter": "quarter",
    "y": "year", "a": "year", "ye": "year", "ys": "year", "ae": "year", "as": "year", "year": "year",
}


def freq_unit(freq: str) -> str:
    """Map a thuml letter ('h', 't', ...) or pandas alias ('15min', 'W-TUE', 'MS') to its time unit."""
    match = re.fullmatch(r"\s*\d*\s*([A-Za-z]+)(-[A-Za-z]+)?\s*", str(freq))
    unit = _UNIT_ALIASES.get(match.group(1).lower()) if match else None
    if unit is None:
        raise ValueError(f"freq={freq!r}: expected one of s, t/min, h, d, b, w, m, q, y "
                         f"(optionally with a multiple such as '15min')")
    return unit


def thuml_freq(freq: str) -> str:
    """The thuml letter for a frequency: 's', 't', 'h', 'd', 'b', 'w', 'm', 'q' or 'a'."""
    return {"second": "s", "minute": "t", "hour": "h", "day": "d", "business_day": "b", "week": "w",
            "month": "m", "quarter": "q", "year": "a"}[freq_unit(freq)]


def time_feature_names(freq: str) -> list[str]:
    return list(_FEATURES_BY_UNIT[freq_unit(freq)])


def time_features(dates, freq: str = "h") -> np.ndarray:
    """thuml timeF encoding (timeenc=1): float32 [T, F], each calendar feature scaled to [-0.5, 0.5].

    freq 'h' gives [HourOfDay, DayOfWeek, DayOfMonth, DayOfYear]; 't' prepends MinuteOfHour,
    's' also SecondOfMinute; 'd'/'b' [DayOfWeek, DayOfMonth, DayOfYear]; 'w' [DayOfMonth, WeekOfYear];
    'm'/'q' [MonthOfYear]; 'a' none. Values are computed in float64 then cast, as thuml's `.float()` does.
    """
    index = pd.DatetimeIndex(pd.to_datetime(dates))
    columns = [np.asarray(_TIME_FEATURES[name](index), dtype=np.float64) for name in time_feature_names(freq)]
    if not columns:
        return np.zeros((len(index), 0), dtype=np.float32)
    return np.stack(columns, axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------

class WindowDataset(Dataset):
    """Stride-1 forecasting windows over one contiguous split, indexed rather than copied.

    Item i: x = data[i : i+seq_len], y = data[i+seq_len-label_len : i+seq_len+pred_len] (thuml's
    decoder span; with label_len=0 just the horizon), marks alike. `__getitems__` builds a whole batch
    with one gather per tensor, so a DataLoader with `collate_fn=keep_batch` does no per-item work.
    """

    def __init__(self, data, marks=None, seq_len: int = 96, pred_len: int = 96, label_len: int = 0):
        data = torch.as_tensor(data, dtype=torch.float32)
        if data.ndim != 2:
            raise ValueError(f"data: expected [T, N], got shape {tuple(data.shape)}")
        marks = torch.zeros(len(data), 0) if marks is None else torch.as_tensor(marks, dtype=torch.float32)
        if marks.ndim != 2 or len(marks) != len(data):
            raise ValueError(f"marks: expected [{len(data)}, F], got shape {tuple(marks.shape)}")
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len)):
            if int(value) < 1:
                raise ValueError(f"{name}={value}: expected >= 1")
        if not 0 <= label_len <= seq_len:
            raise ValueError(f"label_len={label_len}: expected 0 <= label_len <= seq_len={seq_len}")
        self.data, self.marks = data.contiguous(), marks.contiguous()
        self.seq_len, self.pred_len, self.label_len = int(seq_len), int(pred_len), int(label_len)
        self.span = self.seq_len + self.pred_len
        self._length = len(data) - self.span + 1
        if self._length < 1:
            raise ValueError(f"split has {len(data)} rows, fewer than seq_len + pred_len = {self.span}")
        self._offsets = torch.arange(self.span)

    @property
    def n_channels(self) -> int:
        return self.data.shape[1]

    @property
    def n_marks(self) -> int:
        return self.marks.shape[1]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self._length <= index < self._length:
            raise IndexError(f"window {index} out of range for {self._length} windows")
        start = index % self._length
        split_at, y_from = start + self.seq_len, start + self.seq_len - self.label_len
        end = start + self.span
        return {"x": self.data[start:split_at], "x_mark": self.marks[start:split_at],
                "y": self.data[y_from:end], "y_mark": self.marks[y_from:end]}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        starts = torch.as_tensor(indices, dtype=torch.long)
        if starts.numel() and (int(starts.min()) < 0 or int(starts.max()) >= self._length):
            raise IndexError(f"window indices must lie in [0, {self._length})")
        rows = (starts[:, None] + self._offsets).reshape(-1)
        batch = len(starts)
        # One gather per tensor; x and y are views into the same [B, span, C] block.
        values = self.data.index_select(0, rows).view(batch, self.span, -1)
        marks = self.marks.index_select(0, rows).view(batch, self.span, -1)
        y_from = self.seq_len - self.label_len
        return {"x": values[:, :self.seq_len], "x_mark": marks[:, :self.seq_len],
                "y": values[:, y_from:], "y_mark": marks[:, y_from:]}


def keep_batch(batch):
    """collate_fn for WindowDataset: `__getitems__` already returns the stacked batch."""
    return batch


def make_loader(dataset: WindowDataset, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                **loader_kwargs) -> DataLoader:
    """A DataLoader that lets WindowDataset gather whole batches at once."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      collate_fn=keep_batch, **loader_kwargs)


# --------------------------------------------------------------------------------------------------
# Scaling and splits
# --------------------------------------------------------------------------------------------------

@dataclass
class StandardScaler:
    """z-score like sklearn's StandardScaler: population std (ddof 0), constant columns get scale 1."""

    mean_: np.ndarray
    scale_: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> StandardScaler:
        values = np.asarray(values, dtype=np.float64)
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std == 0, 1.0, std))

    def transform(self, values):
        return (values - self.mean_) / self.scale_

    def inverse_transform(self, values):
        """Undo the scaling of numpy or torch values whose last axis is the channel axis."""
        if isinstance(values, torch.Tensor):
            scale = torch.as_tensor(self.scale_, dtype=values.dtype, device=values.device)
            mean = torch.as_tensor(self.mean_, dtype=values.dtype, device=values.device)
            return values * scale + mean
        return np.asarray(values) * self.scale_ + self.mean_


@dataclass
class ForecastSplits:
    """The three windowed splits of one dataset plus what is needed to read them back."""

    name: str
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    columns: list[str]
    target: str
    features: str
    freq: str
    scaler: StandardScaler | None
    dates: dict[str, pd.DatetimeIndex] = field(repr=False)
    borders: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return len(self.columns)

    def inverse_transform(self, values):
        """Back to original units (identity when the splits were not scaled)."""
        return values if self.scaler is None else self.scaler.inverse_transform(values)


def _split_borders(protocol: str, n_rows: int, seq_len: int, split, source: str):
    """(start, end) rows of train/val/test; val and test start seq_len early so their first window
    predicts the split's first row (thuml)."""
    if protocol in _ETT_MONTH_ROWS and split == "standard":
        month = _ETT_MONTH_ROWS[protocol]
        train_end, val_end, test_end = 12 * month, 16 * month, 20 * month
        if n_rows < test_end:
            raise ValueError(f"{source}: {n_rows} rows, the {protocol} protocol needs {test_end}")
    else:
        ratios = (0.7, 0.1, 0.2) if split == "standard" else tuple(split)
        if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1) > 1e-9:
            raise ValueError(f"split={split!r}: expected 'standard' or (train, val, test) ratios summing to 1")
        num_train, num_test = int(n_rows * ratios[0]), int(n_rows * ratios[2])
        train_end, val_end, test_end = num_train, n_rows - num_test, n_rows
    return {"train": (0, train_end), "val": (train_end - seq_len, val_end), "test": (val_end - seq_len, test_end)}


def make_splits(name_or_path, root=None, *, seq_len: int = 96, pred_len: int = 96, label_len: int = 0,
                features: str = "M", target: str = "OT", scale: bool = True, freq: str | None = None,
                split="standard", date_col: str = "date", fill: str | None = None,
                download: bool = True) -> ForecastSplits:
    """Load a dataset by name (ETTh1, ..., or any `<name>.csv` found by `resolve_dataset`) or path and
    cut it into windowed train/val/test splits with thuml's protocol.

    features: 'M' all channels, 'S' the target only, 'MS' all channels with the target last (the
    model predicts all; the caller evaluates the last column). freq: thuml letter for the time
    features; None infers it from the timestamps. thuml's scripts pass 'h' for every dataset, so use
    freq='h' to reproduce their runs on non-hourly data. split: 'standard' or (train, val, test) ratios.
    """
    if features not in ("M", "S", "MS"):
        raise ValueError(f"features={features!r}: expected 'M', 'S' or 'MS'")
    path = Path(name_or_path)
    if not path.is_file():
        if len(path.parts) != 1:
            raise FileNotFoundError(f"{path}: no such file")
        path = resolve_dataset(path.name, root=root, download=download)
    name = path.stem
    frame = load_frame(path, date_col, target=target, fill=fill)

    protocol = name if name in _ETT_MONTH_ROWS else "custom"
    others = [c for c in frame.columns if c not in (date_col, target)]
    if protocol == "custom" or features == "MS":
        columns = others + [target]   # thuml's Dataset_Custom order: target last
    else:
        columns = [c for c in frame.columns if c != date_col]
    if features == "S":
        columns = [target]

    borders = _split_borders(protocol if split == "standard" else "custom", len(frame), seq_len, split, str(path))
    values = frame[columns].to_numpy(dtype=np.float64)
    scaler = None
    if scale:
        scaler = StandardScaler.fit(values[slice(*borders["train"])])
        values = scaler.transform(values)

    freq = thuml_freq(freq or frame.attrs["freq"])
    marks = time_features(frame[date_col], freq)
    windows, dates = {}, {}
    for part, (start, end) in borders.items():
        windows[part] = WindowDataset(values[start:end], marks[start:end], seq_len, pred_len, label_len)
        dates[part] = pd.DatetimeIndex(frame[date_col].iloc[start:end])
    return ForecastSplits(name=name, train=windows["train"], val=windows["val"], test=windows["test"],
                          columns=columns, target=target, features=features, freq=freq, scaler=scaler,
                          dates=dates, borders=borders)


# --------------------------------------------------------------------------------------------------
# Locating and downloading files
# --------------------------------------------------------------------------------------------------

def search_dirs(root=None) -> list[Path]:
    """Where datasets are looked for, in order: root, $MTP_DATA_DIR/ett, the download cache."""
    dirs = [Path(root)] if root is not None else []
    if data_dir() is not None:
        dirs.append(data_dir() / "ett")
    dirs.append(cache_dir("data") / "ett")
    return dirs


def resolve_dataset(name: str, root=None, download: bool = True) -> Path:
    """Path of `<name>.csv`: the first hit in `search_dirs(root)`, else (ETT only) a verified download
    into the cache directory."""
    filename = name if name.lower().endswith(".csv") else f"{name}.csv"
    dirs = search_dirs(root)
    for folder in dirs:
        if (folder / filename).is_file():
            return folder / filename
    stem = Path(filename).stem
    where = ", ".join(str(d) for d in dirs)
    if stem not in ETT_URLS:
        raise FileNotFoundError(f"{filename} not found; put it in one of: {where} (or pass root=...)")
    if not download:
        raise FileNotFoundError(f"{filename} not found in {where} and download=False")
    url, sha256 = ETT_URLS[stem]
    return fetch(url, "data/ett", sha256=sha256, filename=filename, search_dirs=dirs[:-1])


# --------------------------------------------------------------------------------------------------
# Long-format data for pytorch-forecasting
# --------------------------------------------------------------------------------------------------

class LongFormatData:
    """Many series in long format (one row per series and time step) as pytorch-forecasting datasets.

    frame columns: `series_col` (series id), `time_col` (int steps or regular timestamps), `target`
    and optional real covariates (`known_reals` are known in the future, `unknown_reals` are not).
    Windows have encoder length seq_len and prediction length pred_len. Training windows end before
    `val_start` (a time index; default: the step at (1 - val_fraction) of the time range); validation
    windows forecast from `val_start` on, with encoders reaching back into the training period.
    target_normalizer is passed to TimeSeriesDataSet (None: values used as they are; "auto": its default).
    """

    def __init__(self, frame: pd.DataFrame, *, series_col: str, time_col: str, target: str,
                 seq_len: int, pred_len: int, known_reals=(), unknown_reals=(),
                 val_start: int | None = None, val_fraction: float = 0.2, target_normalizer="auto",
                 add_relative_time_idx: bool = False):
        from pytorch_forecasting import TimeSeriesDataSet

        missing = [c for c in (series_col, time_col, target, *known_reals, *unknown_reals) if c not in frame.columns]
        if missing:
            raise ValueError(f"long frame: columns {missing} not found; columns are {list(frame.columns)}")
        frame = frame[[series_col, time_col, target, *known_reals, *unknown_reals]].copy()
        frame[series_col] = frame[series_col].astype(str)
        frame["time_idx"] = self._time_index(frame[time_col], time_col)
        frame = frame.sort_values([series_col, "time_idx"], kind="stable").reset_index(drop=True)
        self._check(frame, series_col, target, [*known_reals, *unknown_reals])

        last = int(frame["time_idx"].max())
        if val_start is None:
            val_start = round(last * (1 - val_fraction))
        if not seq_len + pred_len <= val_start <= last - pred_len + 1:
            raise ValueError(f"val_start={val_start}: expected within [{seq_len + pred_len}, {last - pred_len + 1}] "
                             f"so both training and validation hold whole windows")
        self.frame, self.series_col, self.target = frame, series_col, target
        self.seq_len, self.pred_len, self.val_start = seq_len, pred_len, val_start
        self.training = TimeSeriesDataSet(
            frame[frame["time_idx"] < val_start], time_idx="time_idx", target=target, group_ids=[series_col],
            min_encoder_length=seq_len, max_encoder_length=seq_len,
            min_prediction_length=pred_len, max_prediction_length=pred_len,
            time_varying_known_reals=list(known_reals), time_varying_unknown_reals=[target, *unknown_reals],
            target_normalizer=target_normalizer, add_relative_time_idx=add_relative_time_idx)
        self.validation = TimeSeriesDataSet.from_dataset(self.training, frame, min_prediction_idx=val_start,
                                                         stop_randomization=True)

    @staticmethod
    def _time_index(times: pd.Series, time_col: str) -> pd.Series:
        if pd.api.types.is_integer_dtype(times):
            return times.astype(np.int64) - int(times.min())
        stamps = pd.to_datetime(times, errors="coerce")
        if stamps.isna().any():
            row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
            raise ValueError(f"long frame: row {row} column {time_col!r} value {times.iloc[row]!r} is neither "
                             f"an integer step nor a date")
        # Regular timestamps become consecutive steps shared by all series.
        grid = pd.DatetimeIndex(np.sort(stamps.unique()))
        _check_regular(pd.Series(grid), f"long frame column {time_col!r}", None)
        return pd.Series(grid.get_indexer(stamps), index=times.index, dtype=np.int64)

    @staticmethod
    def _check(frame: pd.DataFrame, series_col: str, target: str, covariates: list[str]) -> None:
        for col in [target, *covariates]:
            values = pd.to_numeric(frame[col], errors="coerce")
            bad = np.flatnonzero(values.isna().to_numpy())
            if len(bad):
                row = frame.iloc[int(bad[0])]
                raise ValueError(f"long frame: series {row[series_col]!r} time_idx {row['time_idx']} column "
                                 f"{col!r} value {row[col]!r} is missing or not numeric")
            frame[col] = values.astype(np.float32)
        step = frame.groupby(series_col, sort=False)["time_idx"].diff()
        bad = np.flatnonzero((step.notna() & (step != 1)).to_numpy())
        if len(bad):
            row = frame.iloc[int(bad[0])]
            raise ValueError(f"long frame: series {row[series_col]!r} jumps to time_idx {row['time_idx']} "
                             f"(step {step.iloc[int(bad[0])]:.0f}); each series needs consecutive, unique steps")

    def train_dataloader(self, batch_size: int = 64, **kwargs) -> DataLoader:
        return self.training.to_dataloader(train=True, batch_size=batch_size, num_workers=0, **kwargs)

    def val_dataloader(self, batch_size: int = 64, **kwargs) -> DataLoader:
        return self.validation.to_dataloader(train=False, batch_size=batch_size, num_workers=0, **kwargs)


def wide_to_long(values, columns, series_name: str = "series", value_name: str = "value") -> pd.DataFrame:
    """[T, N] values -> long frame (series, time_idx, value), one series per column."""
    values = np.asarray(values)
    return pd.DataFrame({
        series_name: np.repeat(np.asarray(columns, dtype=str), len(values)),
        "time_idx": np.tile(np.arange(len(values), dtype=np.int64), values.shape[1]),
        value_name: values.T.reshape(-1).astype(np.float32),
    })
