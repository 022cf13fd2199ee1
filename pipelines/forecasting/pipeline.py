"""Multivariate forecasting: thuml's benchmark protocol for training/evaluation, and forecasts in a user's
own units (with future timestamps and a plot) for inference on CSVs, DataFrames or arrays."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mtp.config import check_kwargs
from mtp.datasets.timeseries import StandardScaler, WindowDataset, load_frame, thuml_freq, time_features
from mtp.engine import make_loader
from mtp.files import atomic_path, resolve_data_path
from mtp.pipeline import InputError, TaskPipeline
from mtp.pipelines.forecasting.metrics import ForecastMetrics
from mtp.registry import DATASETS


class ForecastingPipeline(TaskPipeline):
    task = "forecasting"
    default_backbone = "itransformer"
    input_suffixes = (".csv",)
    train_drop_last = True  # thuml's training loader drops the last partial batch (training only)
    options = {
        "seq_len": 96,         # look-back window
        "pred_len": 96,        # horizon
        "label_len": 0,        # decoder warm-up span (Autoformer-style models)
        "features": "M",       # M: all variates; S: the target only; MS: all in, the target scored
        "target": "OT",
        "date_col": "date",
        "freq": None,          # time-feature frequency letter (h, t, d, ...); None: inferred
        "columns": None,       # variates the model was trained on, in order; None: every numeric column
        "fill": None,          # "interpolate" fills NaN gaps; default rejects them
        "backtest": False,     # hold out the last pred_len rows as truth, forecast them, score and plot
        "plot": True,          # write a PNG beside each forecast CSV
        "history_in_plot": 192,
    }

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
        # Scale with the training statistics when the model carries them; else with the input's own.
        scaler = self.scaler if self.scaler is not None and len(self.scaler.mean_) == values.shape[1] \
            else StandardScaler.fit(values)
        history = scaler.transform(values[-seq_len:])
        x_mark = future = None
        if dates is not None:
            freq = self.config["freq"] or item.get("freq") or pd.infer_freq(dates[-seq_len:])
            x_mark = torch.tensor(time_features(pd.Series(dates[-seq_len:]), thuml_freq(freq)), dtype=torch.float32)
            future = pd.date_range(dates[-1], periods=pred_len + 1, freq=freq)[1:]
        return {"x": torch.tensor(history, dtype=torch.float32), "x_mark": x_mark, "scaler": scaler,
                "future": future, "truth": truth, "history": values[-self.config["history_in_plot"]:],
                "history_dates": dates[-self.config["history_in_plot"]:] if dates is not None else None}

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

    def output_path(self, relative: Path) -> Path:
        return relative.with_name(relative.stem + "_forecast.csv")

    def save(self, result: dict, path: Path, overwrite: bool) -> list[Path]:
        written = []
        if self.config["plot"]:  # the plot first: the CSV's presence marks the item as done
            plot_path = path.with_suffix(".png")
            with atomic_path(plot_path, overwrite=True) as tmp:
                plot_forecast(result, self.config["target"], tmp)
            written.append(plot_path)
        with atomic_path(path, overwrite=overwrite) as tmp:
            result["forecast"].to_csv(tmp)
        return [path, *written]

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
                   backbone_kwargs=recipe.backbone.kwargs, **options)
        pipe.splits = splits
        pipe.scaler = splits.scaler
        return pipe

    def datasets(self, recipe) -> dict:
        return {"train": self.splits.train, "val": self.splits.val, "test": self.splits.test}

    def _scored(self, out, y):
        """thuml: the loss and metrics use the horizon part, and only the target column for MS."""
        first = -1 if self.config["features"] == "MS" else 0
        return out[:, -self.config["pred_len"]:, first:], y[:, -self.config["pred_len"]:, first:]

    def training_loss(self, batch):
        out = self._call_model(batch["x"], batch["x_mark"], batch["y_mark"])
        return F.mse_loss(*self._scored(out, batch["y"]))

    def evaluate_split(self, dataset: WindowDataset, recipe) -> dict:
        self.model.eval()
        first = -1 if self.config["features"] == "MS" else 0
        scaler = self.splits.scaler
        channels = slice(first, None) if first else slice(None)

        def inverse(values):
            if scaler is None:
                return values
            return values * scaler.scale_[channels] + scaler.mean_[channels]

        train_original = inverse(self.splits.train.data.numpy()[:, channels].astype(np.float64))
        season = int(recipe.eval.options.get("season", 1))
        metrics = ForecastMetrics(inverse=inverse, train=train_original, season=season)
        loader = make_loader(dataset, recipe.eval.batch_size, shuffle=False)  # every window: no drop_last
        with torch.inference_mode():
            for batch in loader:
                out = self._call_model(batch["x"].to(self.device), batch["x_mark"].to(self.device),
                                       batch["y_mark"].to(self.device))
                metrics.update(*self._scored(out.float().cpu(), batch["y"]))
        return {**metrics.compute(), "windows": len(dataset)}

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
        return {"scaler": {"mean": self.scaler.mean_.tolist(), "scale": self.scaler.scale_.tolist()}}


def _build_splits(data, path: str):
    entry = DATASETS.get(data.name)
    kwargs = {**entry.kwargs, **data.kwargs}
    check_kwargs(entry.load(), kwargs, f"{path}.kwargs")
    if data.name == "csv":
        if not data.root:
            raise ValueError(f"{path}.root: the csv dataset needs the CSV file's path")
        return entry.load()(resolve_data_path(data.root), **kwargs)
    return entry.load()(root=resolve_data_path(data.root) if data.root else None, **kwargs)


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
