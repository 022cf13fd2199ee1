"""`Pipeline(task, ...)` and the base class every task pipeline derives from: the task contract.

A task writes hooks only: `load` (source -> item), `preprocess`, `forward`, `postprocess`, `save`, and for
training and evaluation `datasets`, `training_loss`, `evaluation_step`. The base class owns everything
around them, the same for every domain:

- typed options (the task's `Options` dataclass), validated like recipes and overridable per call;
- weights: a path, a URL, or a release name (`"official"`, `"x4"`) from the backbone's spec; no weights
  is a loud UntrainedModelWarning unless `pretrained=False` says it is meant;
- input discovery: multi-part suffixes (`.nii.gz`), items that are folders (`is_item_folder`), paired
  inputs (tuples); output names that keep the full stem;
- folder runs: an item is done when all its outputs exist; outputs are written atomically; a broken item is
  reported and the run goes on; the output folder is never the input, never scanned as input, and records
  what produced it (a rerun with other weights or options is refused rather than mixed);
- evaluation: one loop (`evaluate`) over streaming metric objects from METRICS, used by `mtp eval`,
  `pipe.evaluate` and `mtp run`'s test alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mtp.registry import BACKBONES, METRICS, TASKS, UnknownNameError, unknown_name_message

FAILURES_FILE = "failures.json"
PROVENANCE_FILE = ".mtp_run.json"
log = logging.getLogger("mtp.pipeline")


def Pipeline(task: str, backbone: str | None = None, weights: str | None = None, device: str = "auto",
             dtype: str | None = None, pretrained: bool | None = None, **options) -> "TaskPipeline":
    """Build the pipeline for `task` (see `mtp list tasks`).

    `weights`: a checkpoint path or URL, or a release of the backbone (`"official"`, or its name such as
    `"x4"`; see `mtp list backbones`). Without weights the model is untrained: that warns, unless
    `pretrained=False` says it is meant.
    """
    cls = TASKS.get(task).load()
    return cls(backbone=backbone, weights=weights, device=device, dtype=dtype, pretrained=pretrained, **options)


class InputError(ValueError):
    """An input the pipeline cannot use; the message names the file and what was expected."""


class OptionError(ValueError):
    """A task option with a wrong name, type or value; the message names it and what is valid."""


class UntrainedModelWarning(UserWarning):
    """A pipeline runs a model that has no trained weights."""


@dataclass
class NoOptions:
    pass


@dataclass
class Failure:
    input: str
    error: str
    stage: str  # discover | load | preprocess | forward | postprocess | save


@dataclass
class RunReport:
    """What a folder run did. `ok` is False when anything failed; `report_path` lists the failures."""

    output: str
    written: list = field(default_factory=list)          # files written
    items_written: int = 0                               # items completed in this run
    skipped_existing: list = field(default_factory=list)  # items whose outputs all existed
    ignored: list = field(default_factory=list)  # paths the task does not read (with the reason)
    failures: list = field(default_factory=list)
    seconds: float = 0.0
    report_path: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        text = (f"{self.items_written} items done ({len(self.written)} files), {len(self.skipped_existing)} already "
                f"done, {len(self.failures)} failed, {len(self.ignored)} ignored in {self.seconds:.1f} s -> "
                f"{self.output}")
        if self.failures:
            text += "\nfailed:\n" + "\n".join(f"  {f.input}: {f.error}" for f in self.failures)
            text += f"\nfailures report: {self.report_path}"
        return text


def resolve_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise OptionError(f"device {device!r}: not a device name (expected auto, cpu, cuda, cuda:N, mps)") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r}: this machine has no CUDA device; use --device cpu or auto")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise OptionError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if resolved.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise OptionError(f"device {device!r}: MPS is not available on this machine")
    return resolved


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
            raise OptionError(unknown_name_message("dtype", dtype, list(names)))
        resolved = names[dtype]
    if resolved is torch.float16 and device.type == "cpu":
        raise OptionError("dtype float16 needs a CUDA device; on CPU use float32 or bfloat16")
    return resolved


def split_suffix(name: str, suffixes) -> tuple[str, str]:
    """('scan.nii.gz', ('.nii.gz', '.nii')) -> ('scan', '.nii.gz'): the longest matching suffix, case-insensitive;
    else the last one ('a.b.png' -> ('a.b', '.png'))."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix.lower()) and len(name) > len(suffix):
            return name[:-len(suffix)], name[-len(suffix):]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if stem else (name, "")


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
        except Exception as err:  # reported per item, the run goes on
            return _Prepared(index, failure=Failure(_name(source), _describe(err), stage))


def _name(source) -> str:
    if isinstance(source, tuple):
        return " + ".join(_name(s) for s in source)
    if hasattr(source, "shape") and not isinstance(source, (str, Path)):  # arrays, tensors, frames: not their values
        return f"<{type(source).__name__} of shape {tuple(source.shape)}>"
    return str(source)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if not isinstance(err, (InputError, FileExistsError)) else str(err)


_STALE_PART = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part")  # what mtp.files.atomic_path names its temporaries


class TaskPipeline:
    """Base class of every task pipeline. Subclasses set the class attributes and the hook methods."""

    task: ClassVar[str] = ""
    default_backbone: ClassVar[str | None] = None
    input_suffixes: ClassVar[tuple] = ()          # files a folder run picks up (multi-part allowed: ".nii.gz")
    Options: ClassVar[type] = NoOptions           # typed task options (a dataclass; `validate()` checks values)
    max_batch_items: ClassVar[int] = 1 << 30      # some tasks process one item per forward (varying shapes)
    train_drop_last: ClassVar[bool] = False       # the reference training scripts of some tasks drop it
    monitor: ClassVar[tuple] = ("val_loss", "min")  # what early stopping and best.ckpt follow (name, mode)
    metrics: ClassVar[tuple] = ()                 # METRICS names `evaluate` computes
    eval_batch_size: ClassVar[int] = 1

    def __init__(self, backbone: str | None = None, weights: str | None = None, device: str = "auto",
                 dtype: str | None = None, model=None, backbone_kwargs: dict | None = None,
                 pretrained: bool | None = None, **options):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.exported_state = {}
        exported = self._read_export(weights)
        if exported:  # a model saved by `mtp run`: its sidecar says how to rebuild it
            backbone = backbone or exported["backbone"]
            backbone_kwargs = {**exported["kwargs"], **(backbone_kwargs or {})}
            names = self.option_names()
            options = {**{k: v for k, v in exported["options"].items() if k in names}, **options}
            self.exported_state = exported.get("state", {})
        weights, implied = self._resolve_release(backbone, weights, options)
        self.config = self.validate_options({**implied, **options})
        self.backbone_name = backbone
        self.weights = weights
        self.model_kwargs = dict(backbone_kwargs or {})
        if model is None and dtype is not None:
            self._check_dtype(backbone)
        self.model = model if model is not None else self.build_model(backbone, weights, **self.model_kwargs)
        self.untrained = model is None and not weights and self.model is not None
        if self.untrained and pretrained is not False:
            message = (f"{self.task}: the {self.backbone_name or self.default_backbone} model has no trained "
                       f"weights and will give meaningless outputs; pass weights=... (a checkpoint, or "
                       f"'official'), or pretrained=False if an untrained model is what you want")
            warnings.warn(message, UntrainedModelWarning, stacklevel=3)
        if self.model is not None:
            self.model.to(device=self.device, dtype=self.dtype).eval()

    # ------------------------------------------------------------------ options
    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Options)]

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        """Options as a plain dict, after type and value checks; a wrong one fails naming it."""
        from mtp.config import RecipeError, from_dict

        try:
            typed = from_dict(cls.Options, dict(options), source=f"{cls.task} options")
        except RecipeError as err:
            raise OptionError(str(err)) from None
        check = getattr(typed, "validate", None)
        if check is not None:
            try:
                check()
            except (ValueError, TypeError) as err:
                raise OptionError(f"{cls.task} options: {err}") from None
        return dataclasses.asdict(typed)

    @contextlib.contextmanager
    def options_for_call(self, overrides: dict):
        """Per-call option overrides, validated, restored afterwards."""
        if not overrides:
            yield
            return
        saved = self.config
        self.config = self.validate_options({**saved, **overrides})
        try:
            yield
        finally:
            self.config = saved

    # ------------------------------------------------------------------ model
    def _read_export(self, weights):
        from mtp.weights import WeightsError, read_export

        exported = read_export(weights) if weights and not self._is_release_name(weights) else None
        if exported and exported.get("task") != self.task:
            raise WeightsError(f"{weights} was trained for task {exported.get('task')!r}, not {self.task!r}")
        return exported

    @staticmethod
    def _is_release_name(weights) -> bool:
        text = str(weights)
        return not any(ch in text for ch in "/\\.:") and not Path(text).exists()

    def _resolve_release(self, backbone, weights, options: dict):
        """A release name ("official", "x4") -> the local file from the backbone spec, and the options it implies."""
        if not weights or not self._is_release_name(weights):
            return weights, {}
        from mtp.weights import official_weights

        spec = self.backbone_entry(backbone)
        release = self.official_release(spec, options) if weights == "official" else str(weights)
        implied = dict(spec.release(release).options)
        clash = {k: (options[k], v) for k, v in implied.items() if k in options and options[k] is not None
                 and options[k] != v}
        if clash:
            key, (asked, given) = next(iter(clash.items()))
            raise OptionError(f"{spec.name} release {release!r} is for {key}={given}, but {key}={asked} was asked for")
        return str(official_weights(spec, release)), implied

    def _check_dtype(self, backbone) -> None:
        """The backbone's spec lists the dtypes it runs in; another one fails before the model is built."""
        spec = self.backbone_entry(backbone)
        name = str(self.dtype).replace("torch.", "")
        if name not in spec.dtypes:
            raise OptionError(f"dtype {name}: {spec.name} runs in {', '.join(spec.dtypes)}")

    def official_release(self, spec, options: dict) -> str:
        """Which release `weights="official"` means; a task may pick by its options (e.g. the scale)."""
        if "official" in spec.weights:
            return "official"
        if len(spec.weights) == 1:
            return next(iter(spec.weights))
        raise UnknownNameError(f"{spec.name} has {len(spec.weights) or 'no'} releases"
                               f"{': ' + ', '.join(spec.weights) if spec.weights else ''}; name one, "
                               f"e.g. weights={next(iter(spec.weights), 'PATH')!r}")

    def backbone_entry(self, name: str | None):
        name = name or self.default_backbone
        entry = BACKBONES.get(name)
        if self.task not in entry.tasks:
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
            load_into(model, load_state_dict_file(weights, entry.weights_key), source=str(weights))
        return model

    # ------------------------------------------------------------------ stages (override)
    def load(self, source) -> Any:
        """A path (a file, an item folder, a tuple of paired paths) or the task's natural object -> an item.
        Raise InputError for bad input."""
        return source

    def preprocess(self, item) -> dict:
        raise NotImplementedError

    def forward(self, inputs: list[dict]) -> list:
        """Run the model on a list of preprocessed inputs; return one output per input."""
        raise NotImplementedError

    def postprocess(self, output, item, inputs: dict) -> Any:
        """Model output -> the task's result; `item` is what `load` gave, `inputs` what `preprocess` made."""
        return output

    def is_item_folder(self, folder: Path) -> bool:
        """True when a folder is one input (a DICOM series, a case of several files), not a tree to search."""
        return False

    def pair_inputs(self, paths: list[Path], folder: Path) -> list:
        """Group discovered paths into items: a path, or a tuple of paths that form one item (paired inputs).
        The first path of a tuple names the item's outputs."""
        return list(paths)

    def output_paths(self, relative: Path) -> list[Path]:
        """Every file the item at `relative` (inside the input folder) produces; the item is done when all exist.
        The default keeps the input's name (its full stem and suffix)."""
        return [relative]

    def stem(self, relative: Path) -> str:
        """The name of `relative` without its (possibly multi-part) input suffix: 'scan.nii.gz' -> 'scan'."""
        return split_suffix(relative.name, self.input_suffixes)[0]

    def save(self, result, paths: list[Path], overwrite: bool) -> list[Path]:
        """Write `result` to `paths` (from output_paths) atomically; return the files written."""
        raise NotImplementedError

    # ------------------------------------------------------------------ discovery
    def discover(self, folder: Path, exclude: Path | None = None) -> tuple[list, list[str]]:
        """Items under `folder` (sorted, hidden parts skipped) and what was ignored, with the reason."""
        picked, ignored = [], []
        exclude = exclude.resolve() if exclude is not None else None
        suffixes = tuple(s.lower() for s in self.input_suffixes)
        for here, dirs, files in os.walk(folder, followlinks=False):
            here_path = Path(here)
            kept = []
            for name in sorted(dirs):
                path = here_path / name
                if name.startswith("."):
                    continue
                if exclude is not None and path.resolve() == exclude:
                    continue  # the output tree is never input
                if path.is_symlink():
                    ignored.append(f"{path} (a symbolic link to a folder is not followed)")
                elif self.is_item_folder(path):
                    picked.append(path)
                else:
                    kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                path = here_path / name
                if name.startswith("."):
                    continue
                if not path.exists():
                    ignored.append(f"{path} (a broken or self-referencing symbolic link)")
                elif suffixes and name.lower().endswith(suffixes):
                    picked.append(path)
                else:
                    ignored.append(f"{path} (not a {'/'.join(self.input_suffixes) or 'known'} file)")
        picked.sort()
        return self.pair_inputs(picked, folder), ignored

    # ------------------------------------------------------------------ driver
    def __call__(self, inputs, output: str | Path | None = None, batch_size: int = 1, num_workers: int = 0,
                 overwrite: bool = False, progress: bool | None = None, shard: tuple[int, int] | None = None,
                 **options):
        """One item, a list of items, or a folder. An item is a path, the task's natural object, or a tuple of
        paths that form one paired item. With `output`, results are written there and a RunReport returned.
        `options` override the task's options for this call; `shard=(rank, world)` takes every world-th item."""
        with self.options_for_call(options):
            folder = self._as_folder(inputs)
            if output is not None:
                return self._run_to_folder(folder, inputs, Path(output), batch_size, num_workers, overwrite,
                                           progress, shard)
            if folder is not None:
                sources = self.discover(folder)[0]
                return self._run_in_memory(sources, batch_size, num_workers, progress)
            single = not isinstance(inputs, list)
            results = self._run_in_memory([inputs] if single else list(inputs), batch_size, num_workers, progress)
            return results[0] if single else results

    def _as_folder(self, inputs) -> Path | None:
        if isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_dir() and not self.is_item_folder(Path(inputs)):
            return Path(inputs)
        return None

    def _prepared_stream(self, sources: list, batch_size: int, num_workers: int, progress, desc: str):
        """Yield batches of _Prepared; load + preprocess run in DataLoader workers."""
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        loader = DataLoader(_PreparedSource(self, sources), batch_size=max(1, batch_size), shuffle=False,
                            num_workers=num_workers, collate_fn=list)
        bar = tqdm(total=len(sources), desc=desc, unit="item", file=sys.stderr,
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
                    failures.append(Failure(_name(sources[group[0].key]), _describe(err), "forward"))
                    continue
                for p in group:
                    try:
                        yield p, self.forward([p.inputs])[0]
                    except Exception as single_err:
                        failures.append(Failure(_name(sources[p.key]), _describe(single_err), "forward"))

    def _run_in_memory(self, sources: list, batch_size: int, num_workers: int, progress) -> list:
        failures: list[Failure] = []
        results: dict[int, Any] = {}
        for batch in self._prepared_stream(sources, batch_size, num_workers, progress, self.task):
            for prepared, out in self._forward_prepared(batch, failures, sources):
                results[prepared.key] = self.postprocess(out, prepared.item, prepared.inputs)
        if failures:
            raise InputError("\n".join(f"{f.input}: {f.error}" for f in failures))
        return [results[i] for i in range(len(sources))]

    def _check_output_place(self, folder: Path | None, sources: list, output: Path) -> None:
        """The output never replaces or mixes with the input: refuse before anything is read or written."""
        out = output.resolve()
        if folder is not None and out == folder.resolve():
            raise InputError(f"output folder {output} is the input folder: outputs would replace or mix with the "
                             f"originals; choose another --output")
        for source in sources:
            for path in source if isinstance(source, tuple) else (source,):
                if Path(path).resolve() == out:
                    raise InputError(f"output {output} is an input ({path}); choose another --output")

    def provenance(self) -> dict:
        """What produced an output folder: the task, the model and the options that change outputs."""
        weights = None
        if self.weights:
            path = Path(str(self.weights))
            weights = _file_digest(path) if path.is_file() else str(self.weights)
        return {"task": self.task, "backbone": self.backbone_name or self.default_backbone,
                "weights": weights, "untrained": self.untrained,
                "options": json.loads(json.dumps(self.config, default=str))}

    def _check_provenance(self, output: Path, overwrite: bool) -> None:
        from mtp.files import write_text_atomic

        record = output / PROVENANCE_FILE
        mine = self.provenance()
        if record.is_file():
            try:
                theirs = json.loads(record.read_text())
            except json.JSONDecodeError:
                theirs = None
            if theirs != mine and not overwrite:
                changed = sorted(k for k in mine if (theirs or {}).get(k) != mine[k])
                if "options" in changed and theirs:
                    changed += [f"options.{k}" for k in mine["options"]
                                if theirs.get("options", {}).get(k) != mine["options"][k]]
                raise InputError(f"{output} holds outputs of another run (differs in {', '.join(changed)}; see "
                                 f"{record}): they would count as done. Use another --output, or --overwrite to "
                                 f"redo every item with this model")
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record, json.dumps(mine, indent=2))

    @staticmethod
    def _remove_stale_parts(output: Path, older_than: float) -> None:
        """Temporaries left by a killed write (mtp.files.atomic_path) are removed before the run; only ones
        older than this run, so the other processes of a sharded run keep theirs."""
        if not output.is_dir():
            return
        for here, _, files in os.walk(output):
            for name in files:
                path = os.path.join(here, name)
                with contextlib.suppress(OSError):
                    if _STALE_PART.match(name) and os.path.getmtime(path) < older_than:
                        os.unlink(path)

    def _run_to_folder(self, folder, inputs, output: Path, batch_size, num_workers, overwrite, progress,
                       shard=None) -> RunReport:
        start, started_at = time.perf_counter(), time.time()
        if folder is not None:
            sources, ignored = self.discover(folder, exclude=output)
            relative = [Path(s[0] if isinstance(s, tuple) else s).relative_to(folder) for s in sources]
        else:
            items = inputs if isinstance(inputs, list) else [inputs]
            sources = [tuple(Path(p) for p in s) if isinstance(s, tuple) else Path(s) for s in items]
            ignored, relative = [], [Path((s[0] if isinstance(s, tuple) else s).name) for s in sources]
        self._check_output_place(folder, sources, output)
        self._check_provenance(output, overwrite)
        self._remove_stale_parts(output, older_than=started_at - 1.0)
        if shard is not None:
            rank, world = shard
            sources, relative = sources[rank::world], relative[rank::world]
        report = RunReport(output=str(output), ignored=ignored)
        pending = []
        for source, rel in zip(sources, relative):
            targets = [output / p for p in self.output_paths(rel)]
            if not overwrite and all(t.exists() for t in targets):
                report.skipped_existing.append(_name(source))
            else:
                pending.append((source, targets))
        pending_sources = [s for s, _ in pending]
        for batch in self._prepared_stream(pending_sources, batch_size, num_workers, progress, self.task):
            for prepared, out in self._forward_prepared(batch, report.failures, pending_sources):
                source, targets = pending[prepared.key]
                stage = "postprocess"
                try:
                    result = self.postprocess(out, prepared.item, prepared.inputs)
                    stage = "save"
                    report.written += [str(p) for p in self.save(result, targets, True)]
                    report.items_written += 1
                except Exception as err:
                    report.failures.append(Failure(_name(source), _describe(err), stage))
        report.seconds = time.perf_counter() - start
        self.write_failures(output, report, name=FAILURES_FILE if shard is None else f".failures.rank{shard[0]}.json")
        return report

    def write_failures(self, output: Path, report: RunReport, name: str = FAILURES_FILE) -> None:
        from mtp.files import write_text_atomic

        output.mkdir(parents=True, exist_ok=True)
        report_file = output / name
        if report.failures:
            body = {"task": self.task, "failed": [f.__dict__ for f in report.failures],
                    "items_written": report.items_written, "skipped_existing": len(report.skipped_existing)}
            report.report_path = str(write_text_atomic(report_file, json.dumps(body, indent=2)))
        elif report_file.exists():
            report_file.unlink()  # an earlier run's failures are all resolved now

    # ------------------------------------------------------------------ evaluation (one loop for every task)
    def evaluation_dataset(self, data, split: str = "test"):
        """`data` for evaluate: a Dataset as it is, else (a registered name, a folder or a file) the task's."""
        raise NotImplementedError(f"{self.task}: evaluation_dataset is not implemented")

    def evaluation_step(self, batch) -> tuple:
        """One evaluation batch -> (prediction, target) as the task's metrics take them."""
        raise NotImplementedError(f"{self.task}: evaluation_step is not implemented")

    def metric_kwargs(self, name: str, options: dict) -> dict:
        """Keyword arguments of METRICS[name] for this evaluation (protocol, crop border, scaler...)."""
        return {}

    def evaluation_loader(self, dataset, batch_size: int | None):
        from torch.utils.data import DataLoader

        size = batch_size or self.eval_batch_size
        collate = (lambda batch: batch) if hasattr(dataset, "__getitems__") else getattr(dataset, "collate", None)
        return DataLoader(dataset, batch_size=size, shuffle=False, drop_last=False, collate_fn=collate)

    def evaluate(self, data, split: str = "test", batch_size: int | None = None, limit: int | None = None,
                 **metric_options) -> dict:
        """The task's metrics over every sample of `data` (a registered dataset name, a folder, a file or a
        dataset object); `metric_options` go to the metrics (e.g. protocol='matlab')."""
        import torch

        dataset = self.evaluation_dataset(data, split)
        if limit is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
        if len(dataset) == 0:
            raise InputError(f"{data}: nothing to evaluate")
        names = self.metrics
        built = [METRICS.get(name).build(**self.metric_kwargs(name, metric_options)) for name in names]
        unused = set(metric_options) - self.metric_option_names()
        if unused:
            raise OptionError(f"{self.task} evaluation: unknown metric option(s) {sorted(unused)}; valid: "
                              f"{', '.join(sorted(self.metric_option_names())) or '(none)'}")
        self.model.eval()
        with torch.inference_mode():
            for batch in self.evaluation_loader(dataset, batch_size):
                prediction, target = self.evaluation_step(batch)
                for metric in built:
                    metric.update(prediction, target)
        result = {}
        for metric in built:
            result.update(metric.compute())
        result["samples"] = len(dataset)
        if self.untrained:
            result["untrained"] = True  # these figures are of a randomly initialised model
        return result

    def metric_option_names(self) -> set:
        return set()

    # ------------------------------------------------------------------ training hooks (mtp.engine)
    @classmethod
    def from_recipe(cls, recipe) -> "TaskPipeline":
        """Build the pipeline (and its untrained or initial model) from a validated Recipe."""
        from mtp.registry import BACKBONES as _B
        from mtp.config import check_kwargs

        name = recipe.backbone.name or cls.default_backbone
        if recipe.backbone.kwargs:
            check_kwargs(_B.get(name).load(), recipe.backbone.kwargs, "backbone.kwargs", recipe.output.name or "recipe")
        device = "cpu" if recipe.train is None or recipe.train.accelerator == "cpu" else "auto"
        return cls(backbone=name, weights=recipe.backbone.weights, device=device,
                   backbone_kwargs=recipe.backbone.kwargs, pretrained=False if recipe.train else None,
                   **cls.recipe_options(recipe))

    @classmethod
    def recipe_options(cls, recipe) -> dict:
        """The task options a recipe's pipeline is built with: its `options`, to which a task may add what it
        derives from the recipe's data (a tokeniser trained on the training transcripts)."""
        return dict(recipe.options)

    def datasets(self, recipe) -> dict:
        """{'train': ..., 'val': ..., 'test': ...}: for each split the recipe needs, `data.for_split(split)`'s
        registered dataset built with (root, split=..., **kwargs) when it takes a split, else (root, **kwargs)."""
        from mtp.config import check_kwargs
        from mtp.files import resolve_data_root
        from mtp.registry import DATASETS

        import inspect

        splits = {}
        wanted = set(recipe.data.splits) | {recipe.eval.split} | ({"train"} if recipe.train else set())
        for split in sorted(wanted | ({"val"} if recipe.train else set())):
            source = recipe.data.for_split(split)
            if not source.name and split not in wanted:
                continue
            if not source.name:
                raise ValueError(f"data.splits.{split}.name: no dataset given for the {split} split")
            entry = DATASETS.get(source.name)
            builder = entry.load()
            takes_split = "split" in inspect.signature(builder).parameters
            if split not in wanted and not (takes_split and source.root):
                continue  # validation only where the data names it (a split folder, or data.splits.val)
            kwargs = {**entry.kwargs, **source.kwargs, **self.dataset_kwargs(split)}
            check_kwargs(builder, kwargs, f"data.splits.{split}.kwargs")
            root = resolve_data_root(source.root, f"data.splits.{split}.root") if source.root else None
            splits[split] = builder(root, split=split, **kwargs) if takes_split else builder(root, **kwargs)
        return splits

    def dataset_kwargs(self, split: str) -> dict:
        """Arguments every dataset of this task gets from the pipeline (e.g. the model's scale)."""
        return {}

    def fit_direct(self, splits: dict, recipe) -> bool:
        """Fit a model that is not trained by gradient steps (a closed-form fit) and return True; the engine
        then skips the Trainer. Most tasks return False."""
        return False

    def training_loss(self, batch):
        raise NotImplementedError

    def validation_loss(self, batch):
        return self.training_loss(batch)

    def validation_metrics(self, batch) -> dict:
        """What validation logs per batch (averaged over samples by the engine); must include `monitor[0]`."""
        return {"val_loss": self.validation_loss(batch)}

    def write_artifacts(self, run_dir: Path, splits: dict, recipe) -> list[Path]:
        """Task plots and sample outputs for the run folder."""
        return []

    def export_state(self) -> dict:
        """JSON-able state that inference needs beside the weights (e.g. a scaler); see mtp.weights.export."""
        return {}


def _file_digest(path: Path) -> str:
    """sha256 of a weights file, computed once per process for a given (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict = {}
