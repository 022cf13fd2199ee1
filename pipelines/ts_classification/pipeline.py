"""Time-series classification: UEA/UCR archive files, CSV series or arrays in; predicted class and class
probabilities out (one CSV per input file, a row per series).

The data fixes the model's shape: the number of channels, the classes (in the archive header's order) and,
for models built for one length (MPTSNet, TST, MiniRocket), the series length. `from_recipe` reads them from
TRAIN; a trained model carries them in its options, so inference checks new data against them.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from mtp.config import check_kwargs
from mtp.datasets.ts_classification import (SERIES_SUFFIXES, SeriesCollection, SeriesDataset, SeriesFileError,
                                            SeriesTransform, channel_statistics, find_archive_file, pad_batch,
                                            read_series_file)
from mtp.files import atomic_path, resolve_data_path, resolve_data_root
from mtp.pipeline import InputError, TaskPipeline


@dataclass
class TSCOptions:
    classes: Optional[list] = None      # class names in the model's output order (set from TRAIN)
    num_channels: Optional[int] = None  # channels the model takes (set from TRAIN)
    seq_length: Optional[int] = None    # length a fixed-length model is built for; None: TRAIN's longest series
    normalize: str = "none"             # none | series (z-score each series' channels) | channel (TRAIN statistics)
    missing: str = "interpolate"        # interpolate | zero | error (see mtp.datasets.ts_classification)
    too_long: str = "error"             # error | truncate: a series longer than a fixed-length model takes
    label_column: str = "label"         # the class column of CSV series

    def validate(self):
        choices = {"normalize": ("none", "series", "channel"), "missing": ("interpolate", "zero", "error"),
                   "too_long": ("error", "truncate")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(valid)}")
        for name in ("num_channels", "seq_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: expected a positive number")
        if self.classes is not None and len(set(map(str, self.classes))) != len(self.classes):
            raise ValueError(f"classes={self.classes}: names must be distinct")


class TSClassificationPipeline(TaskPipeline):
    task = "ts_classification"
    default_backbone = "inception_time"
    input_suffixes = SERIES_SUFFIXES
    Options = TSCOptions
    metrics = ("classification",)
    # Model selection and early stopping: validation accuracy, ties broken by the lower validation loss. The loss
    # alone picks the epochs before a large model grows confident (MPTSNet on 32 series), accuracy alone the first
    # epoch that reaches the best value; both are measured on the validation part of TRAIN only.
    monitor = ("val_score", "max")
    eval_batch_size = 64
    max_batch_items = 1  # an item is a whole file of series; forward batches its series itself

    # ------------------------------------------------------------------ model
    def build_model(self, backbone, weights, **kwargs):
        from mtp.weights import load_into, load_state_dict_file

        entry = self.backbone_entry(backbone)
        self.backbone_name = entry.name
        cls = entry.load()
        state = load_state_dict_file(weights, key=entry.weights_key) if weights else None
        derived = {}
        if state is not None and hasattr(cls, "config_from_state_dict"):
            derived = cls.config_from_state_dict(state)  # the shapes say the config (explicit kwargs still win)
        elif state is None and not kwargs and hasattr(cls, "data_config") and "periods" not in entry.kwargs:
            raise InputError(f"{entry.name}: part of its configuration comes from the training data; train it "
                             f"from a recipe (mtp run) or give weights=...")
        accepted = inspect.signature(cls).parameters
        data = {"num_channels": self.config["num_channels"] or derived.get("num_channels") or 1,
                "num_classes": len(self.config["classes"]) if self.config["classes"] else derived.get("num_classes", 2),
                "seq_length": self.config["seq_length"] or derived.get("seq_length") or 128}
        built = {**entry.kwargs, **derived, **{k: v for k, v in data.items() if k in accepted}, **kwargs}
        model = entry.build(**built)
        self.model_kwargs = built
        if self.config["classes"] is None:  # an official checkpoint names no classes: indices stand in for them
            self.config["classes"] = [str(i) for i in range(built.get("num_classes", 2))]
            if state is not None:
                warnings.warn(f"{weights} carries no class names: classes are reported as indices 0.."
                              f"{len(self.config['classes']) - 1}; pass classes=[...] in the training order")
        if self.config["num_channels"] is None:
            self.config["num_channels"] = built.get("num_channels")
        if self.config["seq_length"] is None and getattr(cls, "fixed_length", False):
            self.config["seq_length"] = built.get("seq_length")
        if state is not None:
            if hasattr(model, "adopt_shapes"):  # fitted sizes that only the checkpoint knows (MiniRocket)
                model.adopt_shapes(state)
            load_into(model, state, source=str(weights))
        return model

    @property
    def fixed_length(self) -> Optional[int]:
        """The length every batch is padded to, for models built for one length; None: any length."""
        return self.config["seq_length"] if getattr(self.model, "fixed_length", False) else None

    def transform(self) -> SeriesTransform:
        stats = self.exported_state.get("channel_stats") or {}
        if self.config["normalize"] == "channel" and not stats:
            raise InputError("normalize='channel' needs the training statistics, which this model does not carry")
        return SeriesTransform(self.config["missing"], self.config["normalize"], stats.get("mean"), stats.get("std"))

    def configure(self, dataset):
        """Give a dataset this model's preprocessing and length (Subsets: their underlying dataset)."""
        inner = getattr(dataset, "dataset", dataset)
        if isinstance(inner, SeriesDataset):
            inner.transform = self.transform()
            inner.pad_to = self.fixed_length
            if self.config["too_long"] == "truncate":
                inner.transform = _Truncating(inner.transform, self.fixed_length)
        return dataset

    def logits(self, x, mask):
        return self.model(x.to(self.device, self.dtype), mask.to(self.device))

    # ------------------------------------------------------------------ inference stages
    def load(self, source):
        if isinstance(source, np.ndarray):
            array = source[None] if source.ndim == 2 else source
            if array.ndim != 3:
                raise InputError(f"array input: expected (channels, length) or (series, channels, length), got "
                                 f"shape {source.shape}")
            collection = SeriesCollection([a.astype(np.float64) for a in array], None, [], "<array>")
        elif isinstance(source, (str, Path)):
            try:
                collection = read_series_file(source, self.config["label_column"])
            except SeriesFileError as err:
                raise InputError(str(err)) from None
        else:
            raise InputError(f"ts_classification: expected a .ts/.arff/.tsv/.csv path or an array, got "
                             f"{type(source).__name__}")
        expected = self.config["num_channels"]
        if expected and collection.num_channels != expected:
            raise InputError(f"{collection.num_channels} channels, the model takes {expected}")  # the run names the file
        return collection

    def preprocess(self, item: SeriesCollection) -> dict:
        transform, length = self.transform(), self.fixed_length
        series = []
        for i, s in enumerate(item.series):
            where = f"{item.source}, series {i}"
            try:
                x = transform(s, where)
            except SeriesFileError as err:
                raise InputError(str(err)) from None
            if length is not None and x.shape[1] > length:
                if self.config["too_long"] == "error":
                    raise InputError(f"{where}: {x.shape[1]} steps, the model takes at most {length} (seq_length); "
                                     f"pass too_long='truncate' to keep the first {length}")
                x = x[:, :length]
            series.append(x)
        return {"series": series}

    def forward(self, inputs: list[dict]) -> list:
        outputs = []
        for one in inputs:
            probs = []
            with torch.inference_mode():
                for start in range(0, len(one["series"]), self.eval_batch_size):
                    x, mask = pad_batch(one["series"][start:start + self.eval_batch_size], self.fixed_length)
                    probs.append(torch.softmax(self.logits(x, mask).float(), dim=1).cpu().numpy())
            outputs.append(np.concatenate(probs))
        return outputs

    def postprocess(self, output, item: SeriesCollection, inputs: dict):
        import pandas as pd

        classes = [str(c) for c in self.config["classes"]]
        frame = pd.DataFrame({"series": np.arange(len(output)),
                              "predicted": [classes[i] for i in output.argmax(axis=1)]})
        if item.labels is not None:
            frame["label"] = item.labels
        for j, name in enumerate(classes):
            frame[f"p_{name}"] = output[:, j]
        frame.attrs["source"] = item.source
        return frame

    def output_paths(self, relative: Path) -> list[Path]:
        return [relative.with_name(self.stem(relative) + "_predictions.csv")]

    def save(self, result, paths: list[Path], overwrite: bool) -> list[Path]:
        with atomic_path(paths[0], overwrite=overwrite) as tmp:
            result.to_csv(tmp, index=False, float_format="%.6g")
        return list(paths)

    # ------------------------------------------------------------------ training
    @classmethod
    def from_recipe(cls, recipe):
        """Read TRAIN first: the channels, the classes, the length and (MPTSNet) the periods come from it."""
        from mtp.registry import BACKBONES

        train = _build_split(recipe, "train")
        name = recipe.backbone.name or cls.default_backbone
        entry = BACKBONES.get(name)
        model_cls = entry.load()
        check_kwargs(model_cls, recipe.backbone.kwargs, "backbone.kwargs", recipe.output.name or "recipe")
        options = {"classes": list(train.class_names), "num_channels": train.series[0].shape[0],
                   **recipe.options}
        full = train.full_train or train.series
        if getattr(model_cls, "fixed_length", False) and not options.get("seq_length"):
            options["seq_length"] = max(max(s.shape[1] for s in full), getattr(model_cls, "min_length", 1))
        state = {}
        if options.get("normalize") == "channel":
            mean, std = channel_statistics(train.series, options.get("missing", "interpolate"))
            state["channel_stats"] = {"mean": mean, "std": std}
        kwargs = dict(recipe.backbone.kwargs)
        if hasattr(model_cls, "data_config") and not recipe.backbone.weights:
            # computed once from the whole TRAIN file, as the reference recipe does (never from val or test)
            probe = SeriesTransform(options.get("missing", "interpolate"), options.get("normalize", "none"),
                                    **state.get("channel_stats", {}))
            length = options.get("seq_length") or max(s.shape[1] for s in full)
            x, _ = pad_batch([probe(s, train.source) for s in full], length)
            try:
                kwargs = {**model_cls.data_config(x.numpy().astype(np.float64)), **kwargs}
            except ValueError as err:
                raise InputError(f"{train.source}: {name} cannot be configured from this training data: {err}") from None
        device = "cpu" if recipe.train is None or recipe.train.accelerator == "cpu" else "auto"
        pipe = cls(backbone=name, weights=recipe.backbone.weights, device=device, backbone_kwargs=kwargs,
                   pretrained=False if recipe.train else None, **options)
        pipe.exported_state.update(state)
        pipe.train_data = train
        return pipe

    def datasets(self, recipe) -> dict:
        splits = super().datasets(recipe)
        if "train" in splits and getattr(self, "train_data", None) is not None:
            splits["train"] = self.train_data
        for split in splits.values():
            self.configure(split)
        return splits

    def fit_direct(self, splits: dict, recipe) -> bool:
        """Closed-form models (MiniRocket + ridge) fit on the padded training arrays instead of by gradients."""
        fit = getattr(self.model, "fit_arrays", None)
        if fit is None:
            return False
        train = splits["train"]
        x, _ = pad_batch([train[i][0] for i in range(len(train))], self.fixed_length)
        fit(x.numpy(), np.asarray(train.targets), seed=recipe.train.seed)
        return True

    def training_loss(self, batch):
        return F.cross_entropy(self.model(batch["x"], batch["mask"]), batch["y"])

    def validation_metrics(self, batch) -> dict:
        logits = self.model(batch["x"], batch["mask"])
        loss = F.cross_entropy(logits, batch["y"])
        accuracy = (logits.argmax(1) == batch["y"]).float().mean()
        # batch means, averaged over samples by the engine: the score is the epoch's accuracy - loss / 1000
        return {"val_loss": loss, "val_accuracy": accuracy, "val_score": accuracy - loss.clamp(max=100.0) / 1000}

    # ------------------------------------------------------------------ evaluation
    def evaluation_dataset(self, data, split: str = "test"):
        """A dataset as it is; a labelled file; a folder or an archive name ($MTP_DATA_DIR) with <name>_TEST."""
        if isinstance(data, (str, Path)):
            path = resolve_data_path(data)
            if path.is_file():
                collection = read_series_file(path, self.config["label_column"])
            else:
                folder, name = (path, None) if path.is_dir() else (None, str(data))
                if name is None:
                    found = sorted({p.name.rsplit("_", 1)[0] for p in path.glob(f"*_{split.upper()}.*")
                                    if p.suffix.lower() in SERIES_SUFFIXES})
                    if len(found) != 1:
                        raise InputError(f"{data}: expected one <name>_{split.upper()} file, found {found or 'none'}")
                    name = found[0]
                collection = read_series_file(find_archive_file(folder, name, split))
            classes = [str(c) for c in self.config["classes"]]
            if collection.labels is None:
                raise InputError(f"{collection.source}: no class labels to evaluate against")
            if collection.num_channels != self.config["num_channels"]:
                raise InputError(f"{collection.source}: {collection.num_channels} channels, the model takes "
                                 f"{self.config['num_channels']}")
            unknown = [i for i, label in enumerate(collection.labels) if label not in classes]
            if unknown:
                raise InputError(f"{collection.source}: class {collection.labels[unknown[0]]!r} (series {unknown[0]}) "
                                 f"is not one of the model's classes {classes}")
            data = SeriesDataset(collection.series, collection.labels, classes, collection.source)
        return self.configure(data)

    def evaluation_loader(self, dataset, batch_size):
        from torch.utils.data import DataLoader

        inner = getattr(dataset, "dataset", dataset)
        return DataLoader(dataset, batch_size=batch_size or self.eval_batch_size, shuffle=False, drop_last=False,
                          collate_fn=inner.collate)

    def evaluation_step(self, batch) -> tuple:
        return self.logits(batch["x"], batch["mask"]).float().cpu(), batch["y"]

    def metric_kwargs(self, name: str, options: dict) -> dict:
        return {"class_names": [str(c) for c in self.config["classes"]]}

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        """The validation split's TRAIN rows (to rerun it) and the confusion matrix of the evaluated split."""
        import json

        from mtp.files import write_text_atomic

        written = []
        if "val" in splits and isinstance(splits["val"], SeriesDataset):
            record = {"source": splits["val"].source, "train_rows": splits["train"].indices,
                      "val_rows": splits["val"].indices}
            written.append(write_text_atomic(run_dir / "val_split.json", json.dumps(record)))
        split = recipe.eval.split
        result = self.evaluate(splits[split], batch_size=recipe.eval.batch_size)
        path = run_dir / f"confusion_{split}.png"
        with atomic_path(path, overwrite=True) as tmp:
            plot_confusion(np.asarray(result["confusion_matrix"]), [str(c) for c in self.config["classes"]],
                           f"{recipe.output.name} ({split}): accuracy {result['accuracy']:.3f}", tmp)
        return written + [path]

    def export_state(self) -> dict:
        return {k: v for k, v in self.exported_state.items() if k == "channel_stats"}


class _Truncating:
    def __init__(self, transform, length):
        self.transform, self.length = transform, length

    def __call__(self, x, where):
        x = self.transform(x, where)
        return x[:, :self.length] if self.length else x


def _build_split(recipe, split: str) -> SeriesDataset:
    from mtp.registry import DATASETS

    source = recipe.data.for_split(split)
    if not source.name:
        raise ValueError(f"data.name: no dataset given for the {split} split")
    entry = DATASETS.get(source.name)
    builder = entry.load()
    kwargs = {**entry.kwargs, **source.kwargs}
    check_kwargs(builder, kwargs, "data.kwargs")
    root = resolve_data_root(source.root, "data.root") if source.root else None
    return builder(root, split=split, **kwargs)


def plot_confusion(matrix: np.ndarray, classes: list, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.5, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
