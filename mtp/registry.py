"""Registries of named tasks, backbones, datasets and metrics.

An entry names the object it stands for as "module:attribute", so registering imports nothing; the
object is imported the first time it is used. The entries themselves are declared, as plain data, in the
`__init__` of `mtp.pipelines`, `mtp.backbones`, `mtp.datasets`; each registry reads its declaring module
on first lookup, then every module named by an ``mtp.plugins`` entry point, so a separate package adds
tasks, backbones, datasets or metrics without editing mtp::

    [project.entry-points."mtp.plugins"]
    my_task = "my_package.mtp_plugin"      # a module that calls TASKS.register(...) etc.

Backbones are described by a typed :class:`BackboneSpec` (presets, official weights, detection from a
state dict, capabilities, published metric protocol); models built through :func:`construct` record their
constructor arguments in ``model.init_config``, which is what export writes.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

PLUGIN_GROUP = "mtp.plugins"
log = logging.getLogger("mtp.registry")


class UnknownNameError(KeyError, ValueError):
    """A name that no registry entry has; the message lists the valid names and the closest match."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid: {', '.join(sorted(valid)) or '(none)'}"


def import_object(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def construct(cls, **kwargs):
    """``cls(**kwargs)``, recording every constructor argument (defaults included) as ``init_config``.

    This is what an exported model's sidecar stores, so nobody writes a per-domain list of arguments.
    """
    model = cls(**kwargs)
    try:
        bound = inspect.signature(cls).bind(**kwargs)
        bound.apply_defaults()
        config = {k: v for k, v in bound.arguments.items()
                  if inspect.signature(cls).parameters[k].kind is not inspect.Parameter.VAR_KEYWORD}
        var_kw = [k for k, p in inspect.signature(cls).parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD]
        for name in var_kw:
            config.update(bound.arguments.get(name, {}))
    except (TypeError, ValueError):
        config = dict(kwargs)
    try:
        model.init_config = config
    except AttributeError:  # objects with __slots__ or frozen attributes
        pass
    return model


@dataclass(frozen=True)
class Entry:
    """One registered name: what it builds (`target`), with which keyword arguments, and its metadata."""

    name: str
    target: str
    kwargs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def load(self) -> Any:
        return import_object(self.target)

    def build(self, **overrides) -> Any:
        return construct(self.load(), **{**self.kwargs, **overrides})

    def get(self, key: str, default=None):
        """A typed field, else a metadata value."""
        return getattr(self, key) if hasattr(self, key) and key not in ("name", "target") else \
            self.meta.get(key, default)


@dataclass(frozen=True)
class WeightsSpec:
    """One released checkpoint: where it is published and what it needs."""

    url: Optional[str] = None           # direct download; None: only a page to fetch it from by hand
    sha256: Optional[str] = None
    filename: Optional[str] = None      # default: the URL's last part
    page: Optional[str] = None          # where a person finds it (for files without a direct URL)
    key: Optional[str] = None           # nesting key of the state dict in the file (e.g. params_ema)
    licence: Optional[str] = None       # None: the authors state none
    options: dict = field(default_factory=dict)  # task options these weights imply (e.g. scale=4)

    @property
    def file_name(self) -> str:
        if self.filename:
            return self.filename
        if not self.url:
            raise ValueError("a WeightsSpec needs a url or a filename")
        return self.url.rsplit("/", 1)[-1].split("?")[0]


@dataclass(frozen=True)
class BackboneSpec(Entry):
    """A backbone variant: constructor preset (`kwargs`), tasks, official weights and capabilities."""

    tasks: tuple = ()
    description: str = ""
    weights: dict = field(default_factory=dict)   # release name ("x4", "official") -> WeightsSpec
    detect: Optional[str] = None        # "module:function": state dict -> architecture, ValueError if not ours
    protocol: Optional[str] = None      # the published metric protocol its paper used
    size_multiple: int = 1              # input height/width (or length) must be a multiple of this
    dtypes: tuple = ("float32", "bfloat16", "float16")
    bytes_per_element: Optional[float] = None  # activation memory per input element (tiling, sliding windows)
    weights_key: Optional[str] = None   # default nesting key of its checkpoints
    family: Optional[str] = None        # folder name under $MTP_WEIGHTS_DIR; default: the name
    sample_rate: Optional[int] = None   # audio backbones: the rate (Hz) the model works at

    def release(self, name: str) -> WeightsSpec:
        if name not in self.weights:
            valid = list(self.weights)
            raise UnknownNameError(unknown_name_message(f"weights release of {self.name}", name, valid)
                                   if valid else f"{self.name} has no released weights; train it with a recipe")
        return self.weights[name]


class Registry:
    def __init__(self, kind: str, declared_in: str, entry_type: type = Entry):
        self.kind = kind
        self.declared_in = declared_in
        self.entry_type = entry_type
        self._entries: dict[str, Entry] = {}
        self._declared = False

    def register(self, name: str, target: str, kwargs: dict | None = None, **fields) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if self.entry_type is Entry:
            entry = Entry(name, target, dict(kwargs or {}), fields)
        else:
            known = {f for f in self.entry_type.__dataclass_fields__} - {"name", "target", "kwargs", "meta"}
            unknown = [k for k in fields if k not in known]
            if unknown:
                raise TypeError(f"{self.kind} {name!r}: unknown field(s) {unknown}; valid: {sorted(known)}")
            if "tasks" in fields:
                fields["tasks"] = tuple(fields["tasks"])
            entry = self.entry_type(name, target, dict(kwargs or {}), {}, **fields)
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _ensure_declared(self) -> None:
        if not self._declared:
            self._declared = True
            importlib.import_module(self.declared_in)
            load_plugins()

    def get(self, name: str) -> Entry:
        self._ensure_declared()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, list(self._entries))) from None

    def names(self, **meta_filter) -> list[str]:
        return [e.name for e in self.entries(**meta_filter)]

    def entries(self, **meta_filter) -> list[Entry]:
        self._ensure_declared()
        return [e for e in self._entries.values()
                if all(_meta_matches(e.get(k), v) for k, v in meta_filter.items())]

    def __contains__(self, name: str) -> bool:
        self._ensure_declared()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())


def _meta_matches(value, wanted) -> bool:
    if isinstance(value, (list, tuple, set)):
        return wanted in value
    return value == wanted


_plugins_loaded = False


def load_plugins() -> None:
    """Import every module named by an ``mtp.plugins`` entry point (once). A broken plugin is logged, not fatal."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in ("mtp.pipelines", "mtp.backbones", "mtp.datasets"):  # plugins may extend any registry
        importlib.import_module(module)
    from importlib.metadata import entry_points

    for point in entry_points(group=PLUGIN_GROUP):
        try:
            point.load()
        except Exception as err:  # one broken plugin must not take the built-in tasks down
            log.warning("mtp plugin %r (%s) failed to load: %s: %s", point.name, point.value, type(err).__name__, err)


TASKS = Registry("task", "mtp.pipelines")
BACKBONES = Registry("backbone", "mtp.backbones", BackboneSpec)
DATASETS = Registry("dataset", "mtp.datasets")
METRICS = Registry("metric", "mtp.pipelines")
