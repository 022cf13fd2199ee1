"""`Pipeline(task, ...)` and the base class every task pipeline derives from.

A task pipeline is three stages, `preprocess` -> `forward` -> `postprocess`, plus `load` (file -> item)
and `save` (result -> file). The base class owns everything around them: device and dtype, batching,
folders mirrored into an output tree with a DataLoader and a progress bar, skipping finished outputs,
atomic writes, and the failures report. Training from a recipe uses the hooks at the end of the class
(see mtp.engine).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mtp.registry import BACKBONES, TASKS, UnknownNameError, unknown_name_message

FAILURES_FILE = "failures.json"


def Pipeline(task: str, backbone: str | None = None, weights: str | None = None, device: str = "auto",
             dtype: str | None = None, **options) -> "TaskPipeline":
    """Build the pipeline for `task` (see `mtp list tasks`)."""
    cls = TASKS.get(task).load()
    return cls(backbone=backbone, weights=weights, device=device, dtype=dtype, **options)


class InputError(ValueError):
    """An input the pipeline cannot use; the message names the file and what was expected."""


@dataclass
class Failure:
    input: str
    error: str
    stage: str  # load | preprocess | forward | postprocess | save


@dataclass
class RunReport:
    """What a folder run did. `ok` is False when anything failed; `report_path` lists the failures."""

    output: str
    written: list = field(default_factory=list)
    skipped_existing: list = field(default_factory=list)
    ignored: list = field(default_factory=list)  # files whose type the task does not read
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    report_path: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        text = (f"{len(self.written)} written, {len(self.skipped_existing)} already done, "
                f"{len(self.failures)} failed, {len(self.ignored)} ignored in {self.seconds:.1f} s -> {self.output}")
        if self.failures:
            text += "\nfailed:\n" + "\n".join(f"  {f.input}: {f.error}" for f in self.failures)
            text += f"\nfailures report: {self.report_path}"
        return text


def resolve_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype, device):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                 "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(unknown_name_message("dtype", dtype, list(names)))
        resolved = names[dtype]
    if resolved is torch.float16 and device.type == "cpu":
        raise ValueError("dtype float16 needs a CUDA device; on CPU use float32 or bfloat16")
    return resolved


class _Prepared:
    """One input after load + preprocess, or the failure that stopped it (built in DataLoader workers)."""

    __slots__ = ("key", "item", "inputs", "failure")

    def __init__(self, key, item=None, inputs=None, failure=None):
        self.key, self.item, self.inputs, self.failure = key, item, inputs, failure


class _PreparedSource:
    def __init__(self, pipeline: "TaskPipeline", sources: list):
        self.pipeline, self.sources = pipeline, sources

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, index):
        source = self.sources[index]
        stage = "load"
        try:
            item = self.pipeline.load(source)
            stage = "preprocess"
            return _Prepared(index, item, self.pipeline.preprocess(item))
        except Exception as err:  # reported per file, the run goes on
            return _Prepared(index, failure=Failure(str(source), _describe(err), stage))


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if not isinstance(err, (InputError, FileExistsError)) else str(err)


class TaskPipeline:
    """Base class of every task pipeline. Subclasses set the class attributes and the stage methods."""

    task: ClassVar[str] = ""
    default_backbone: ClassVar[str | None] = None
    input_suffixes: ClassVar[tuple] = ()          # files a folder run picks up
    options: ClassVar[dict] = {}                  # option name -> default value
    max_batch_items: ClassVar[int] = 1 << 30      # some tasks process one item per forward (varying shapes)
    train_drop_last: ClassVar[bool] = False       # the reference training scripts of some tasks drop it

    def __init__(self, backbone: str | None = None, weights: str | None = None, device: str = "auto",
                 dtype: str | None = None, model=None, backbone_kwargs: dict | None = None, **options):
        unknown = [k for k in options if k not in self.options]
        if unknown:
            raise UnknownNameError(unknown_name_message(f"option for {self.task}", unknown[0], list(self.options)))
        self.config = {**self.options, **options}
        self.exported_state = {}
        exported = self._read_export(weights)
        if exported:  # a model saved by `mtp run`: its sidecar says how to rebuild it
            backbone = backbone or exported["backbone"]
            backbone_kwargs = {**exported["kwargs"], **(backbone_kwargs or {})}
            self.config.update({k: v for k, v in exported["options"].items() if k in self.options and k not in options})
            self.exported_state = exported.get("state", {})
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.backbone_name = backbone
        self.weights = weights
        self.model_kwargs = dict(backbone_kwargs or {})
        self.model = model if model is not None else self.build_model(backbone, weights, **self.model_kwargs)
        if self.model is not None:
            self.model.to(device=self.device, dtype=self.dtype).eval()

    # ------------------------------------------------------------------ model
    def _read_export(self, weights):
        from mtp.weights import WeightsError, read_export

        exported = read_export(weights) if weights else None
        if exported and exported.get("task") != self.task:
            raise WeightsError(f"{weights} was trained for task {exported.get('task')!r}, not {self.task!r}")
        return exported

    def backbone_entry(self, name: str | None):
        name = name or self.default_backbone
        entry = BACKBONES.get(name)
        if self.task not in entry.meta.get("tasks", ()):
            valid = BACKBONES.names(tasks=self.task)
            raise UnknownNameError(unknown_name_message(f"backbone for {self.task}", name, valid))
        return entry

    def build_model(self, backbone: str | None, weights: str | None, **kwargs):
        """Build the registered backbone and load `weights` strictly. Tasks may detect it from weights."""
        from mtp.weights import load_into, load_state_dict_file

        entry = self.backbone_entry(backbone)
        self.model_kwargs = {**entry.kwargs, **kwargs}
        model = entry.build(**kwargs)
        if weights:
            load_into(model, load_state_dict_file(weights, entry.meta.get("weights_key")), source=str(weights))
        return model

    # ------------------------------------------------------------------ stages (override)
    def load(self, source) -> Any:
        """A path (or the task's natural object) -> an item. Raise InputError for bad input."""
        return source

    def preprocess(self, item) -> dict:
        raise NotImplementedError

    def forward(self, inputs: list[dict]) -> list:
        """Run the model on a list of preprocessed inputs; return one output per input."""
        raise NotImplementedError

    def postprocess(self, output, item, inputs: dict) -> Any:
        """Model output -> the task's result; `item` is what `load` gave, `inputs` what `preprocess` made."""
        return output

    def output_path(self, relative: Path) -> Path:
        """Where the result for an input at `relative` (inside the input folder) goes."""
        return relative

    def save(self, result, path: Path, overwrite: bool) -> list[Path]:
        """Write `result` to `path` atomically; return the files written."""
        raise NotImplementedError

    # ------------------------------------------------------------------ driver
    def __call__(self, inputs, output: str | Path | None = None, batch_size: int = 1, num_workers: int = 0,
                 overwrite: bool = False, progress: bool | None = None):
        """One item, a list, or a folder. With `output`, results are written there and a RunReport returned."""
        folder = self._as_folder(inputs)
        if output is not None:
            return self._run_to_folder(folder, inputs, Path(output), batch_size, num_workers, overwrite, progress)
        if folder is not None:
            sources = self._scan(folder)[0]
            return self._run_in_memory(sources, batch_size, num_workers, progress)
        single = not isinstance(inputs, (list, tuple))
        results = self._run_in_memory([inputs] if single else list(inputs), batch_size, num_workers, progress)
        return results[0] if single else results

    @staticmethod
    def _as_folder(inputs) -> Path | None:
        if isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_dir():
            return Path(inputs)
        return None

    def _scan(self, folder: Path) -> tuple[list[Path], list[Path]]:
        picked, ignored = [], []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            (picked if path.suffix.lower() in self.input_suffixes else ignored).append(path)
        return picked, ignored

    def _prepared_stream(self, sources: list, batch_size: int, num_workers: int, progress, desc: str):
        """Yield batches of _Prepared; load + preprocess run in DataLoader workers."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        loader = DataLoader(_PreparedSource(self, sources), batch_size=max(1, batch_size), shuffle=False,
                            num_workers=num_workers, collate_fn=list)
        bar = tqdm(total=len(sources), desc=desc, unit="item",
                   disable=not progress if progress is not None else None)
        with bar:
            for batch in loader:
                yield batch
                bar.update(len(batch))

    def _forward_prepared(self, batch: list[_Prepared], failures: list, sources: list):
        """Forward the good items of a batch; a failing batch is retried item by item to isolate the culprit."""
        good = [p for p in batch if p.failure is None]
        failures.extend(p.failure for p in batch if p.failure is not None)
        groups = [good[i:i + self.max_batch_items] for i in range(0, len(good), self.max_batch_items)]
        for group in groups:
            try:
                outputs = self.forward([p.inputs for p in group])
                yield from zip(group, outputs)
            except Exception as err:
                if len(group) == 1:
                    failures.append(Failure(str(sources[group[0].key]), _describe(err), "forward"))
                    continue
                for p in group:
                    try:
                        yield p, self.forward([p.inputs])[0]
                    except Exception as single_err:
                        failures.append(Failure(str(sources[p.key]), _describe(single_err), "forward"))

    def _run_in_memory(self, sources: list, batch_size: int, num_workers: int, progress) -> list:
        failures: list[Failure] = []
        results: dict[int, Any] = {}
        for batch in self._prepared_stream(sources, batch_size, num_workers, progress, self.task):
            for prepared, out in self._forward_prepared(batch, failures, sources):
                results[prepared.key] = self.postprocess(out, prepared.item, prepared.inputs)
        if failures:
            raise InputError("\n".join(f"{f.input}: {f.error}" for f in failures))
        return [results[i] for i in range(len(sources))]

    def _run_to_folder(self, folder, inputs, output: Path, batch_size, num_workers, overwrite, progress) -> RunReport:
        start = time.perf_counter()
        if folder is not None:
            sources, ignored = self._scan(folder)
            relative = [p.relative_to(folder) for p in sources]
        else:
            sources = [Path(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
            ignored, relative = [], [Path(p.name) for p in sources]
        report = RunReport(output=str(output), ignored=[str(p) for p in ignored])
        targets = [output / self.output_path(rel) for rel in relative]
        pending = []
        for source, target in zip(sources, targets):
            (report.skipped_existing if target.exists() and not overwrite else pending).append((source, target))
        if report.skipped_existing:
            report.skipped_existing = [str(s) for s, _ in report.skipped_existing]
        pending_sources = [s for s, _ in pending]
        for batch in self._prepared_stream(pending_sources, batch_size, num_workers, progress, self.task):
            for prepared, out in self._forward_prepared(batch, report.failures, pending_sources):
                source, target = pending[prepared.key]
                stage = "postprocess"
                try:
                    result = self.postprocess(out, prepared.item, prepared.inputs)
                    stage = "save"
                    report.written += [str(p) for p in self.save(result, target, overwrite)]
                except Exception as err:
                    report.failures.append(Failure(str(source), _describe(err), stage))
        report.seconds = time.perf_counter() - start
        output.mkdir(parents=True, exist_ok=True)
        report_file = output / FAILURES_FILE
        if report.failures:
            from mtp.files import write_text_atomic

            body = {"task": self.task, "failed": [f.__dict__ for f in report.failures],
                    "written": len(report.written), "skipped_existing": len(report.skipped_existing)}
            report.report_path = str(write_text_atomic(report_file, json.dumps(body, indent=2)))
        elif report_file.exists():
            report_file.unlink()  # an earlier run's failures are all resolved now
        return report

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, data, **kwargs) -> dict:
        """The task's metrics on `data` (a registered dataset name, a folder, or a dataset object)."""
        raise NotImplementedError(f"{self.task} has no evaluation")

    # ------------------------------------------------------------------ training hooks (mtp.engine)
    @classmethod
    def from_recipe(cls, recipe) -> "TaskPipeline":
        """Build the pipeline (and its untrained or initial model) from a validated Recipe."""
        raise NotImplementedError(f"{cls.task} cannot be trained from a recipe yet")

    def datasets(self, recipe) -> dict:
        """{'train': ..., 'val': ..., 'test': ...} torch datasets for `recipe.data`."""
        raise NotImplementedError

    def training_loss(self, batch):
        raise NotImplementedError

    def validation_loss(self, batch):
        return self.training_loss(batch)

    def evaluate_split(self, dataset, recipe) -> dict:
        """Metrics of self.model on an evaluation split, computed over every sample (no drop_last)."""
        raise NotImplementedError

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        """Task plots and sample outputs for the run folder."""
        return []

    def export_state(self) -> dict:
        """JSON-able state that inference needs beside the weights (e.g. a scaler); see mtp.weights.export."""
        return {}

