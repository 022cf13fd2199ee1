"""Recipes: YAML validated into typed config objects.

An unknown or mistyped key fails with its dotted path and the nearest valid key; `key=value` overrides
from the command line are applied before validation, so they are checked the same way. A recipe may name
a `base` recipe (relative path) whose keys it extends.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class RecipeError(ValueError):
    pass


@dataclass
class BackboneConfig:
    name: Optional[str] = None          # registered backbone variant; None: the task's default
    kwargs: dict = field(default_factory=dict)  # constructor overrides, checked against its signature
    weights: Optional[str] = None       # checkpoint to start from (path or URL)


@dataclass
class SplitConfig:
    name: Optional[str] = None          # None: the data section's
    root: Optional[str] = None
    kwargs: dict = field(default_factory=dict)  # merged over the data section's kwargs


@dataclass
class DataConfig:
    name: str = ""                      # registered dataset (`mtp list datasets`)
    root: Optional[str] = None          # folder or file; relative paths are looked up under $MTP_DATA_DIR
    kwargs: dict = field(default_factory=dict)  # the dataset builder's arguments
    splits: dict[str, SplitConfig] = field(default_factory=dict)  # per-split sources (train/val/test)

    def for_split(self, split: str) -> SplitConfig:
        """The source of one split: the section's name/root/kwargs, overridden by `splits[split]`."""
        own = self.splits.get(split, SplitConfig())
        return SplitConfig(own.name or self.name, own.root or self.root, {**self.kwargs, **own.kwargs})


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = -1                 # > 0: stop after this many optimiser steps (iteration-based recipes)
    batch_size: int = 32
    optimizer: str = "adam"             # adam | adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "none"             # none | halve_per_epoch | multistep | cosine | warmup_cosine | a torch one
    scheduler_kwargs: dict = field(default_factory=dict)  # that scheduler's arguments (e.g. OneCycleLR max_lr)
    scheduler_interval: Optional[str] = None  # step | epoch; default: step for max_steps recipes, else epoch
    scheduler_monitor: str = "val_loss"  # what ReduceLROnPlateau follows (train_loss: the epoch's mean loss)
    milestones: list[int] = field(default_factory=list)  # multistep: steps (iteration recipes) or epochs
    gamma: float = 0.5
    grad_clip: Optional[float] = None
    patience: Optional[int] = None      # early stopping on the validation loss
    val_every_steps: Optional[int] = None  # iteration recipes validate every N steps instead of per epoch
    ema_decay: Optional[float] = None   # keep an exponential moving average of the weights for evaluation
    average_best: Optional[int] = None  # evaluate the mean weights of the N best epochs by the validation monitor
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: Union[int, str] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    num_workers: int = 0
    threads: Optional[int] = None       # torch intra-op threads on CPU
    seed: int = 2021
    checkpoint_every_steps: Optional[int] = None  # also save `last.ckpt` every N steps (long epochs)


@dataclass
class EvalConfig:
    split: str = "test"
    batch_size: int = 64
    options: dict = field(default_factory=dict)  # task metric options (protocol, crop border, ...)


@dataclass
class OutputConfig:
    dir: str = "runs"
    name: Optional[str] = None          # run folder name; None: the recipe's file name
    plots: bool = True


@dataclass
class Recipe:
    task: str
    description: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: Optional[TrainConfig] = None  # None: evaluation-only recipe
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    options: dict = field(default_factory=dict)  # the task pipeline's options

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- parsing

def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003). The value is read as YAML, so lists and nulls work."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def apply_override(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override {dotted}: {'.'.join(parts[:i + 1])} is a {type(child).__name__}, "
                              f"not a section")
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe_dict(path: str | Path, _seen: tuple = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    if path.resolve() in _seen:
        raise RecipeError(f"{path}: recipes extend each other in a loop")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    base = raw.pop("base", None)
    if base:
        raw = _deep_merge(read_recipe_dict(path.parent / base, (*_seen, path.resolve())), raw)
    return raw


RECIPE_DIRS = (Path("recipes"), Path(__file__).resolve().parents[1] / "recipes")


def recipe_files() -> list[Path]:
    """Every recipe under ./recipes and the package's recipes/ (one per file name, the local one first)."""
    seen, found = set(), []
    for folder in RECIPE_DIRS:
        for path in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            if path.name not in seen:
                seen.add(path.name)
                found.append(path)
    return found


def find_recipe(spec: str | Path) -> Path:
    """A recipe file as given, else a recipe found by name (`ett_itransformer`, `recipes/ett_itransformer.yaml`)
    in the recipe folders, from any working directory."""
    path = Path(spec)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml"
    matches = [p for p in recipe_files() if p.name == name]
    if len(matches) == 1:
        return matches[0]
    names = [p.stem for p in recipe_files()]
    close = difflib.get_close_matches(Path(name).stem, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise RecipeError(f"recipe not found: {spec} (no such file, and no recipe of that name in "
                      f"{', '.join(str(d) for d in RECIPE_DIRS)}).{hint} `mtp list recipes` lists them")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = find_recipe(path)
    raw = read_recipe_dict(path)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    recipe = from_dict(Recipe, raw, source=str(path))
    if recipe.output.name is None:
        recipe.output.name = Path(path).stem
    return recipe


def from_dict(cls, data: Any, source: str = "recipe", path: str = ""):
    """Build dataclass `cls` from plain data, checking every key and type."""
    where = f"{source}: {path}" if path else source
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping for {cls.__name__}, found {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise RecipeError(f"{source}: unknown key {dotted!r}.{_nearest(key, list(fields), path)} "
                              f"Valid keys{' under ' + path if path else ''}: {', '.join(fields)}")
        values[key] = _convert(hints[key], value, source, dotted)
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RecipeError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**values)


def _nearest(key, valid: list[str], path: str) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    return f" Did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""


def _convert(hint, value, source: str, path: str):
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own error is the useful one
            return _convert(real[0], value, source, path)
        for option in real:
            try:
                return _convert(option, value, source, path)
            except RecipeError:
                continue
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise RecipeError(f"{source}: {path}: expected {names}, found {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, {} if value is None else value, source, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: {path}: expected a list, found {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(item, v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {path}: expected a mapping, found {type(value).__name__} {value!r}")
        item = (typing.get_args(hint) or (str, Any))[1]
        return {k: _convert(item, v, source, f"{path}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise RecipeError(f"{source}: {path}: expected {hint.__name__}, found {type(value).__name__} {value!r}")


def check_kwargs(fn, kwargs: dict, path: str, source: str = "recipe") -> None:
    """Fail early, with the dotted path, when `kwargs` names an argument `fn` does not take."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            raise RecipeError(f"{source}: unknown key {path + '.' + key!r} for {getattr(fn, '__qualname__', fn)}."
                              f"{_nearest(key, list(params), path)} Valid: {', '.join(p for p in params if p != 'self')}")
