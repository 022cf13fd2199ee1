"""Checkpoints: find them (path or URL), read them (.pth/.pt/.ckpt/.safetensors), unwrap the usual
nesting (`params_ema`, `params`, `state_dict`, `model`, a `module.` prefix) and load them strictly with a
readable report of what did not match."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

from mtp.files import fetch

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
# Keys under which training code nests the weights, in the order a user would want them (EMA first).
NESTING_KEYS = ("params_ema", "params", "state_dict", "model", "model_state_dict", "net", "generator")
PREFIXES = ("module.", "model.", "_orig_mod.")


class WeightsError(ValueError):
    pass


def resolve(spec: str | Path, sha256: str | None = None) -> Path:
    """A local path as it is, or an http(s) URL downloaded once to the weights cache."""
    text = os.path.expandvars(str(spec))
    if text.startswith(("http://", "https://")):
        return fetch(text, "weights", sha256=sha256)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}. Give a path to a {'/'.join(CHECKPOINT_SUFFIXES)} "
                           f"file or an http(s) URL")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw object stored in a checkpoint file (a dict)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
                           f"{safe_reason(err)}). mtp never unpickles arbitrary objects: a checkpoint must "
                           f"hold tensors and plain containers only") from err
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of tensors (a state dict), found {type(obj).__name__}")
    return obj


def safe_reason(err: BaseException) -> str:
    """The first line of a loading error, without torch's advice to retry with weights_only=False (which
    would run whatever code the file carries)."""
    text = str(err).splitlines()[0] if str(err) else ""
    if "weights_only" in text or "Weights only load failed" in text:
        return "it contains objects other than tensors and plain containers"
    return text


def official_weights(spec, release: str) -> Path:
    """The local file of a backbone's released weights: found under $MTP_WEIGHTS_DIR (or its family folder)
    or the weights cache, else downloaded and checked; offline, the error names the file and where to put it."""
    from mtp.files import DownloadError, cache_dir, weights_dirs

    wanted = spec.release(release)
    family = spec.family or spec.name
    search = [d for root in weights_dirs() for d in (root / family, root)]
    name = wanted.file_name
    if wanted.url:
        return fetch(wanted.url, "weights", sha256=wanted.sha256, filename=name, search_dirs=search)
    for folder in [*search, cache_dir("weights")]:
        if (folder / name).is_file():
            return folder / name
    places = ", ".join(str(d / name) for d in [*search, cache_dir("weights")])
    raise DownloadError(f"{spec.name} {release}: {name} has no direct download; get it from {wanted.page} and put "
                        f"it at one of: {places}")


def extract_state_dict(obj: dict, key: str | None = None, source: str = "checkpoint") -> "OrderedDict":
    """Pick the state dict out of a checkpoint object and drop wrapper prefixes.

    `key` forces one nesting key; otherwise the first of NESTING_KEYS present is used, recursively.
    """
    import torch

    if key is not None:
        if key not in obj:
            raise WeightsError(f"{source}: no key {key!r}; top-level keys are {sorted(obj)[:20]}")
        obj = obj[key]
    while not _is_state_dict(obj):
        nested = next((k for k in NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            raise WeightsError(f"{source}: found no state dict; top-level keys are {sorted(obj)[:20]}, "
                               f"expected tensors or one of {NESTING_KEYS}")
        obj = obj[nested]
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    for prefix in PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = OrderedDict((k[len(prefix):], v) for k, v in tensors.items())
    return tensors


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and sum(isinstance(v, torch.Tensor) for v in obj.values()) > len(obj) / 2


def load_state_dict_file(path: str | Path, key: str | None = None) -> "OrderedDict":
    path = resolve(path)
    return extract_state_dict(read_checkpoint(path), key=key, source=str(path))


@dataclass
class LoadReport:
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)  # (key, checkpoint shape, model shape)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 10) -> str:
        lines = []
        for title, items in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} with another shape:")
            lines += [f"    {k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:limit]]
        return "\n".join(lines)


def compare(model, state_dict) -> LoadReport:
    own = model.state_dict()
    report = LoadReport(missing=[k for k in own if k not in state_dict],
                        unexpected=[k for k in state_dict if k not in own])
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                         if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return report


def load_into(model, state_dict, strict: bool = True, source: str = "checkpoint") -> LoadReport:
    """Load `state_dict` into `model`; with `strict`, any difference raises WeightsError with the report."""
    report = compare(model, state_dict)
    if strict and not report.ok:
        raise WeightsError(f"{source} does not fit {type(model).__name__}:\n{report.format()}")
    usable = {k: v for k, v in state_dict.items() if k not in report.unexpected
              and k not in {m[0] for m in report.mismatched}}
    model.load_state_dict(usable, strict=False)
    return report


def export(pipe, path: Path) -> Path:
    """Save a trained pipeline's model as `path` (.safetensors) plus `path.json`: what rebuilds it."""
    import json

    from safetensors.torch import save_file

    from mtp.files import atomic_path, write_text_atomic

    state, seen = {}, set()
    for key, value in pipe.model.state_dict().items():
        value = value.detach().contiguous().cpu()
        # Tied tensors (MossFormer2's one rotary table under every layer's key) share storage, which
        # safetensors refuses; each key gets its own copy, and loading ties nothing back (the values are equal).
        if value.numel() and value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        state[key] = value
    with atomic_path(path, overwrite=True) as tmp:
        save_file(state, str(tmp))
    kwargs = getattr(pipe.model, "init_config", None) or pipe.model_kwargs
    sidecar = {"task": pipe.task, "backbone": pipe.backbone_name, "kwargs": kwargs,
               "options": pipe.config, "state": pipe.export_state()}
    write_text_atomic(path.with_suffix(".json"), json.dumps(sidecar, indent=2, default=str))
    return path


def read_export(weights) -> dict | None:
    """The sidecar `<weights>.json` that `export` wrote (backbone, kwargs, options, state), if any."""
    import json

    sidecar = Path(os.path.expandvars(str(weights))).with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{sidecar}: not valid JSON ({err})") from err


def describe(path: str | Path) -> dict:
    """What a checkpoint holds: nesting, tensor count, parameters, dtypes, and the architecture if known."""
    from mtp.registry import BACKBONES, import_object

    path = resolve(path)
    raw = read_checkpoint(path)
    state = extract_state_dict(raw, source=str(path))
    info = {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "top_level_keys": sorted(raw)[:20] if not _is_state_dict(raw) else ["<state dict>"],
        "tensors": len(state),
        "numel": int(sum(v.numel() for v in state.values())),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in state.values()}),
        "first_keys": list(state)[:5],
    }
    exported = read_export(path)
    if exported:  # a model written by `mtp run` says what it is
        info.update(task=exported.get("task"), tasks=[exported.get("task")], backbone=exported.get("backbone"),
                    architecture=exported.get("kwargs"), sidecar=str(path.with_suffix(".json")))
        return info
    for detector in dict.fromkeys(spec.detect for spec in BACKBONES.entries() if spec.detect):
        try:
            arch = import_object(detector)(state)
        except (ValueError, KeyError):
            continue
        info["architecture"] = asdict(arch) if is_dataclass(arch) else arch
        # The task follows from what the weights are, not from the first task that accepts them.
        tasks = list(getattr(arch, "tasks", ()))
        info["tasks"] = tasks
        info["task"] = tasks[0] if len(tasks) == 1 else None
        if getattr(arch, "backbone", None):
            info["backbone"] = arch.backbone
        break
    return info
