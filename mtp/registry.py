"""Registries of named tasks, backbones, datasets and metrics.

An entry names the object it stands for as "module:attribute", so registering imports nothing; the
object is imported the first time it is used. The entries themselves are declared, as plain data, in the
`__init__` of `mtp.pipelines`, `mtp.backbones`, `mtp.datasets`; each registry reads its declaring module
on first lookup.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Iterator


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
        return self.load()(**{**self.kwargs, **overrides})


class Registry:
    def __init__(self, kind: str, declared_in: str):
        self.kind = kind
        self.declared_in = declared_in
        self._entries: dict[str, Entry] = {}
        self._declared = False

    def register(self, name: str, target: str, kwargs: dict | None = None, **meta) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(name, target, dict(kwargs or {}), meta)
        self._entries[name] = entry
        return entry

    def _ensure_declared(self) -> None:
        if not self._declared:
            self._declared = True
            importlib.import_module(self.declared_in)

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
                if all(_meta_matches(e.meta.get(k), v) for k, v in meta_filter.items())]

    def __contains__(self, name: str) -> bool:
        self._ensure_declared()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())


def _meta_matches(value, wanted) -> bool:
    if isinstance(value, (list, tuple, set)):
        return wanted in value
    return value == wanted


TASKS = Registry("task", "mtp.pipelines")
BACKBONES = Registry("backbone", "mtp.backbones")
DATASETS = Registry("dataset", "mtp.datasets")
METRICS = Registry("metric", "mtp.pipelines")
