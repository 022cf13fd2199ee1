"""Multivariate forecasting: thuml's benchmark protocol for training/evaluation, and forecasts in a user's
own units (with future timestamps and a plot) for inference on CSVs, DataFrames or arrays."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mtp.config import check_kwargs
from mtp.datasets.forecasting import (StandardScaler, WindowDataset, load_frame, make_loader, make_splits,
                                      thuml_freq, time_features)
from mtp.files import atomic_path, resolve_data_path, resolve_data_root
from mtp.pipeline import InputError, TaskPipeline
from mtp.registry import DATASETS


@dataclass
class ForecastOptions:
    seq_len: int = 96                   # look-back window
    pred_len: int = 96                  # horizon
    label_len: int = 0                  # decoder warm-up span (Autoformer-style models)
    features: str = "M"                 # M: all variates; S: the target only; MS: all in, the target scored
    target: str = "OT"
    date_col: str = "date"
    freq: Optional[str] = None          # time-feature frequency letter (h, t, d, ...); None: inferred
    columns: Optional[list] = None      # variates the model was trained on, in order; None: every numeric column
    fill: Optional[str] = None          # "interpolate" fills NaN gaps; default rejects them
    backtest: bool = False              # hold out the last pred_len rows as truth, forecast them, score and plot
    plot: bool = True                   # write a PNG beside each forecast CSV
    history_in_plot: int = 192

    def validate(self):
        if self.features not in ("M", "S", "MS"):
            raise ValueError(f"features={self.features!r}: expected 'M', 'S' or 'MS'")
        if self.fill not in (None, "interpolate"):
            raise ValueError(f"fill={self.fill!r}: expected null or 'interpolate'")
        for name in ("seq_len", "pred_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive number of steps")
        if self.label_len < 0 or self.history_in_plot < 0:
            raise ValueError("label_len and history_in_plot must be 0 or more")


class ForecastingPipeline(TaskPipeline):
    task = "forecasting"
    default_backbone = "itransformer"
    input_suffixes = (".csv",)
    train_drop_last = True  # thuml's training loader drops the last partial batch (training only)
    Options = ForecastOptions
    metrics = ("forecast_errors",)
    eval_batch_size = 256

    # ------------------------------------------------------------------ model
    def build_model(self, backbone, weights, **kwargs):
        from mtp.weights import load_into, load_state_dict_file

        entry = self.backbone_entry(backbone)
        self.backbone_name = entry.name
        scaler = self.exported_state.get("scaler")
        self.scaler = StandardScaler(np.asarray(scaler["mean"]), np.asarray(scaler["scale"])) if scaler else None
        built = self._model_kwargs(entry, kwargs)
        model = entry.load()(**built)
        self.model_kwargs = built
        if weights:
            load_into(model, load_state_dict_file(weights), source=str(weights))
        return model

    def _model_kwargs(self, entry, kwargs: dict) -> dict:
        """Backbone kwargs: the registry's, the data-derived ones it accepts, then the explicit ones."""
        accepted = inspect.signature(entry.load()).parameters
        derived = {"seq_len": self.config["seq_len"], "pred_len": self.config["pred_len"],
                   "label_len": self.config["label_len"], "freq": self.config["freq"] or "h"}
        if self.config["columns"]:
            derived["enc_in"] = len(self.config["columns"])
        built = {k: v for k, v in derived.items() if k in accepted}
        return {**entry.kwargs, **built, **kwargs}

    def _call_model(self, x, x_mark, y_mark=None):
        if getattr(self, "_takes_y_mark", None) is None:
            self._takes_y_mark = "y_mark" in inspect.signature(self.model.forward).parameters
        if self._takes_y_mark:
            return self.model(x, x_mark, y_mark)
        return self.model(x, x_mark)

    # ------------------------------------------------------------------ inference stages
    def load(self, source):
        if isinstance(source, np.ndarray):
            if source.ndim != 2:
                raise InputError(f"array input: expected [time, variates], got shape {source.shape}")
            return {"name": "<array>", "values": source.astype(np.float64), "dates": None,
                    "columns": [f"x{i}" for i in range(source.shape[1])]}
        if isinstance(source, (str, Path, pd.DataFrame)):
            frame = load_frame(source, self.config["date_col"], fill=self.config["fill"])
            name = "<DataFrame>" if isinstance(source, pd.DataFrame) else str(source)
            columns = self.config["columns"] or [c for c in frame.columns if c != self.config["date_col"]]
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise InputError(f"{name}: the model needs columns {missing}, found {list(frame.columns)}")
            if self.config["features"] == "S":
                columns = [self.config["target"]]
            return {"name": name, "values": frame[columns].to_numpy(np.float64),
                    "dates": pd.DatetimeIndex(frame[self.config["date_col"]]), "columns": list(columns),
                    "freq": frame.attrs.get("freq")}
        raise InputError(f"forecasting: expected a CSV path, a DataFrame or a [time, variates] array, "
                         f"got {type(source).__name__}")

    def preprocess(self, item) -> dict:
        seq_len, pred_len = self.config["seq_len"], self.config["pred_len"]
        values, dates = item["values"], item["dates"]
        truth = None
        if self.config["backtest"]:
            values, truth = values[:-pred_len], values[-pred_len:]
            dates = dates[:-pred_len] if dates is not None else None
        if len(values) < seq_len:
            need = seq_len + (pred_len if self.config["backtest"] else 0)
            raise InputError(f"{item['name']}: {len(item['values'])} rows, the model needs at least {need} "
                             f"(look-back {seq_len}{' + horizon' if self.config['backtest'] else ''})")
        if self.scaler is not None and len(self.scaler.mean_) != values.shape[1]:
            raise InputError(f"{item['name']}: {values.shape[1]} variates, the model was trained on "
                             f"{len(self.scaler.mean_)}{' (' + ', '.join(self.config['columns']) + ')' if self.config['columns'] else ''}")
        # Scale with the training statistics when the model carries them; else with the input's own.
        scaler = self.scaler if self.scaler is not None else StandardScaler.fit(values)
        history = scaler.transform(values[-seq_len:])
        x_mark = future = None
        if dates is not None:
            self._check_frequency(item)
            data_freq = item.get("freq") or pd.infer_freq(dates[-seq_len:]) or self.config["freq"]
            # Time features as in training (thuml's scripts use 'h' even for daily data); timestamps as the data's.
            mark_freq = thuml_freq(self.config["freq"] or data_freq)
            x_mark = torch.tensor(time_features(pd.Series(dates[-seq_len:]), mark_freq), dtype=torch.float32)
            future = pd.date_range(dates[-1], periods=pred_len + 1, freq=data_freq)[1:]
        return {"x": torch.tensor(history, dtype=torch.float32), "x_mark": x_mark, "scaler": scaler,
                "future": future, "truth": truth, "history": values[-self.config["history_in_plot"]:],
                "history_dates": dates[-self.config["history_in_plot"]:] if dates is not None else None}

    def _check_frequency(self, item) -> None:
        """A model trained on hourly data gets hourly data: its time features and future timestamps assume it."""
        trained = self.exported_state.get("data_freq")
        given = item.get("freq")
        if not trained or not given:
            return
        if pd.tseries.frequencies.to_offset(given) != pd.tseries.frequencies.to_offset(trained):
            raise InputError(f"{item['name']}: rows are {given!r} apart, the model was trained on {trained!r} data; "
                             f"resample the file to {trained!r} first (pandas: frame.resample({trained!r}).mean())")

    def forward(self, inputs: list[dict]) -> list:
        x = torch.stack([i["x"] for i in inputs]).to(self.device)
        marks = [i["x_mark"] for i in inputs]
        x_mark = torch.stack(marks).to(self.device) if all(m is not None for m in marks) else None
        if getattr(self.model, "requires_marks", False) and x_mark is None:
            raise InputError("this model needs timestamps: give a CSV or DataFrame with a date column")
        with torch.inference_mode():
            out = self._call_model(x, x_mark)
        return [o.float().cpu().numpy() for o in out]

    def postprocess(self, output, item, inputs: dict) -> dict:
        forecast = inputs["scaler"].inverse_transform(output)
        future = inputs["future"]
        index = future if future is not None else pd.RangeIndex(len(item["values"]), len(item["values"]) + len(forecast))
        frame = pd.DataFrame(forecast, columns=item["columns"], index=index)
        frame.index.name = self.config["date_col"] if future is not None else "step"
        result = {"forecast": frame, "name": item["name"], "history": inputs["history"],
                  "history_dates": inputs["history_dates"], "truth": inputs["truth"]}
        if inputs["truth"] is not None:
            err = forecast - inputs["truth"]
            result["metrics"] = {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}
        return result

    def output_paths(self, relative: Path) -> list[Path]:
        base = relative.with_name(self.stem(relative) + "_forecast")
        paths = [base.with_suffix(".csv")]
        if self.config["plot"]:
            paths.append(base.with_suffix(".png"))
        if self.config["backtest"]:
            paths.append(base.with_name(base.name + "_metrics.json"))
        return paths

    def save(self, result: dict, paths: list[Path], overwrite: bool) -> list[Path]:
        import json

        with atomic_path(paths[0], overwrite=overwrite) as tmp:
            result["forecast"].to_csv(tmp)
        for path in paths[1:]:
            with atomic_path(path, overwrite=overwrite) as tmp:
                if path.suffix == ".png":
                    plot_forecast(result, self.config["target"], tmp)
                else:  # the backtest's scores in original units
                    tmp.write_text(json.dumps({"input": result["name"], **result.get("metrics", {})}, indent=2))
        return list(paths)

    # ------------------------------------------------------------------ training and evaluation
    @classmethod
    def from_recipe(cls, recipe):
        splits = _build_splits(recipe.data, "data")
        options = {"seq_len": splits.train.seq_len, "pred_len": splits.train.pred_len,
                   "label_len": splits.train.label_len, "features": splits.features, "target": splits.target,
                   "freq": splits.freq, "columns": list(splits.columns), **recipe.options}
        entry_name = recipe.backbone.name or cls.default_backbone
        from mtp.registry import BACKBONES

        check_kwargs(BACKBONES.get(entry_name).load(), recipe.backbone.kwargs, "backbone.kwargs",
                     recipe.output.name or "recipe")
        device = "cpu" if recipe.train is None or recipe.train.accelerator == "cpu" else "auto"
        pipe = cls(backbone=entry_name, weights=recipe.backbone.weights, device=device,
                   backbone_kwargs=recipe.backbone.kwargs, pretrained=False if recipe.train else None, **options)
        pipe.splits = splits
        pipe.scaler = splits.scaler
        return pipe

    def datasets(self, recipe) -> dict:
        """thuml's borders cut one series into train/val/test (scaled with train statistics); a split with its
        own source in `data.splits` (another CSV) replaces that part, scaled with the same statistics."""
        out = {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}
        for split, own in recipe.data.splits.items():
            if own.root is None and own.name is None:
                continue
            source = recipe.data.for_split(split)
            path = resolve_data_root(source.root, f"data.splits.{split}.root") if source.root else None
            if path is None or not path.is_file():
                raise ValueError(f"data.splits.{split}.root: expected a CSV file for the {split} split")
            out[split] = self._windows_from_file(path)
        return out

    def _windows_from_file(self, path: Path) -> WindowDataset:
        frame = load_frame(path, self.config["date_col"], target=self.config["target"], fill=self.config["fill"])
        missing = [c for c in self.splits.columns if c not in frame.columns]
        if missing:
            raise InputError(f"{path}: the training data has columns {missing} that this file lacks")
        values = frame[list(self.splits.columns)].to_numpy(np.float64)
        if self.splits.scaler is not None:
            values = self.splits.scaler.transform(values)
        marks = time_features(frame[self.config["date_col"]], self.splits.freq)
        return WindowDataset(values, marks, self.config["seq_len"], self.config["pred_len"], self.config["label_len"])

    def _scored(self, out, y):
        """thuml: the loss and metrics use the horizon part, and only the target column for MS."""
        first = -1 if self.config["features"] == "MS" else 0
        return out[:, -self.config["pred_len"]:, first:], y[:, -self.config["pred_len"]:, first:]

    def training_loss(self, batch):
        out = self._call_model(batch["x"], batch["x_mark"], batch["y_mark"])
        return F.mse_loss(*self._scored(out, batch["y"]))

    # ------------------------------------------------------------------ evaluation (the base class's loop)
    def evaluation_dataset(self, data, split: str = "test"):
        """A window dataset as it is; a registered name (ETTh1) or a CSV: thuml's split of it, scaled with its
        own training part, as the benchmark protocol does."""
        if not isinstance(data, (str, Path)):
            return data
        text = str(data)
        from mtp.registry import DATASETS

        name = text if text in DATASETS else None
        path = resolve_data_path(text) if name is None else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{data}: neither a registered dataset ({', '.join(DATASETS.names(tasks='forecasting'))}) "
                                    f"nor a CSV file")
        self.splits = make_splits(name or path, seq_len=self.config["seq_len"], pred_len=self.config["pred_len"],
                                  label_len=self.config["label_len"], features=self.config["features"],
                                  target=self.config["target"], freq=self.config["freq"],
                                  date_col=self.config["date_col"], fill=self.config["fill"])
        if self.config["columns"] and list(self.splits.columns) != list(self.config["columns"]):
            raise InputError(f"{data}: columns {list(self.splits.columns)} differ from the model's "
                             f"{self.config['columns']}")
        parts = {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}
        if split not in parts:
            raise ValueError(f"split {split!r}: expected one of {', '.join(parts)}")
        return parts[split]

    def evaluation_loader(self, dataset, batch_size):
        return make_loader(dataset, batch_size or self.eval_batch_size, shuffle=False)  # every window

    def evaluation_step(self, batch) -> tuple:
        out = self._call_model(batch["x"].to(self.device), batch["x_mark"].to(self.device),
                               batch["y_mark"].to(self.device))
        return self._scored(out.float().cpu(), batch["y"])

    def metric_option_names(self) -> set:
        return {"season"}

    def metric_kwargs(self, name: str, options: dict) -> dict:
        """Original units through the training scaler; MASE against the seasonal naive forecast of train."""
        first = -1 if self.config["features"] == "MS" else 0
        channels = slice(first, None) if first else slice(None)
        scaler = self.splits.scaler

        def inverse(values):
            if scaler is None:
                return values
            return values * scaler.scale_[channels] + scaler.mean_[channels]

        train_original = inverse(self.splits.train.data.numpy()[:, channels].astype(np.float64))
        return {"inverse": inverse, "train": train_original, "season": int(options.get("season", 1))}

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        """A plot of the first test window: history, forecast and truth of the target (original units)."""
        test = splits["test"]
        sample = test[0]
        with torch.inference_mode():
            out = self._call_model(sample["x"][None], sample["x_mark"][None], sample["y_mark"][None])[0].numpy()
        scaler = self.splits.scaler or StandardScaler(np.zeros(test.n_channels), np.ones(test.n_channels))
        dates = self.splits.dates["test"]
        seq, pred = self.config["seq_len"], self.config["pred_len"]
        result = {"forecast": pd.DataFrame(scaler.inverse_transform(out[-pred:]), columns=self.splits.columns,
                                           index=dates[seq:seq + pred]),
                  "history": scaler.inverse_transform(sample["x"].numpy()), "history_dates": dates[:seq],
                  "truth": scaler.inverse_transform(sample["y"][-pred:].numpy()), "name": f"{self.splits.name} test[0]"}
        path = run_dir / "forecast_test0.png"
        with atomic_path(path, overwrite=True) as tmp:
            plot_forecast(result, self.config["target"], tmp)
        return [path]

    def export_state(self) -> dict:
        """What inference needs beside the weights: the training scaler (original units)."""
        if self.scaler is None:
            return {}
        state = {"scaler": {"mean": self.scaler.mean_.tolist(), "scale": self.scaler.scale_.tolist()}}
        dates = getattr(self, "splits", None) and self.splits.dates.get("train")
        if dates is not None and len(dates) >= 3:
            state["data_freq"] = pd.infer_freq(dates[: min(len(dates), 100)])
        return state


def _build_splits(data, path: str):
    entry = DATASETS.get(data.name)
    kwargs = {**entry.kwargs, **data.kwargs}
    check_kwargs(entry.load(), kwargs, f"{path}.kwargs")
    if data.name == "csv":
        if not data.root:
            raise ValueError(f"{path}.root: the csv dataset needs the CSV file's path")
        return entry.load()(resolve_data_root(data.root, f"{path}.root"), **kwargs)
    return entry.load()(root=resolve_data_root(data.root, f"{path}.root") if data.root else None, **kwargs)


def plot_forecast(result: dict, target: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forecast = result["forecast"]
    column = target if target in forecast.columns else forecast.columns[-1]
    index = list(forecast.columns).index(column)
    fig, ax = plt.subplots(figsize=(10, 3.5), dpi=100)
    history = np.asarray(result["history"])[:, index]
    hist_x = result["history_dates"] if result.get("history_dates") is not None else np.arange(-len(history), 0)
    ax.plot(hist_x, history, color="0.3", lw=1, label="history")
    ax.plot(forecast.index, forecast[column].to_numpy(), color="tab:blue", lw=1.5, label="forecast")
    if result.get("truth") is not None:
        ax.plot(forecast.index, np.asarray(result["truth"])[:, index], color="tab:orange", lw=1, label="truth")
    ax.set_title(f"{result['name']}: {column}")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
