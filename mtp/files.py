"""File plumbing shared by every domain: atomic writes, cached downloads with sha256, the data directory."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """Where downloads of `kind` ("weights", "data") are kept: $MTP_CACHE_DIR/kind or ~/.cache/mtp/kind."""
    root = os.environ.get("MTP_CACHE_DIR") or Path.home() / ".cache" / "mtp"
    return Path(root) / kind


def data_dir() -> Path | None:
    """The user's data directory ($MTP_DATA_DIR), where datasets are looked up before any download."""
    value = os.environ.get("MTP_DATA_DIR")
    return Path(value) if value else None


def weights_dirs() -> list[Path]:
    """Folders searched for released weights before any download: $MTP_WEIGHTS_DIR (os.pathsep-separated)."""
    value = os.environ.get("MTP_WEIGHTS_DIR")
    return [Path(p) for p in value.split(os.pathsep) if p] if value else []


def resolve_data_path(path: str | Path) -> Path:
    """A recipe's data path: absolute as given; relative ones under $MTP_DATA_DIR when it has them."""
    path = Path(os.path.expandvars(str(path))).expanduser()
    root = data_dir()
    if not path.is_absolute() and root is not None and (root / path).exists():
        return root / path
    return path


def resolve_data_root(root: str | Path, key: str) -> Path:
    """A root the user gave (a recipe's data.root): honoured or an error naming it, never silently replaced."""
    path = resolve_data_path(root)
    if not path.exists():
        where = f" or under $MTP_DATA_DIR ({data_dir()})" if data_dir() is not None and not Path(root).is_absolute() else ""
        raise FileNotFoundError(f"{key}: {root} does not exist (looked for {path}{where})")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False):
    """Yield a temporary path beside `path`; on success it is renamed onto `path` in one step.

    A crash or an exception leaves no partial file behind. An existing `path` is an error unless
    `overwrite` is set.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the user's usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, before any thread runs
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class DownloadError(RuntimeError):
    pass


def fetch(url: str, kind: str, sha256: str | None = None, filename: str | None = None,
          search_dirs: list[Path] = ()) -> Path:
    """Return a local copy of `url`: found in `search_dirs` or the cache, else downloaded and verified.

    Offline, the error says exactly which file to put where.
    """
    filename = filename or url.rsplit("/", 1)[-1].split("?")[0]
    target = cache_dir(kind) / filename
    for folder in [*search_dirs, target.parent]:
        candidate = Path(folder) / filename
        if candidate.is_file():
            _verify(candidate, sha256)
            return candidate
    try:
        with atomic_path(target, overwrite=True) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
            _verify(tmp, sha256, source=url)
    except OSError as err:  # URLError is an OSError
        places = ", ".join(str(Path(d) / filename) for d in [*search_dirs, target.parent])
        raise DownloadError(f"could not download {url} ({err}). If this machine is offline, fetch the file "
                            f"elsewhere and put it at one of: {places}") from err
    return target


def _verify(path: Path, sha256: str | None, source: str | None = None) -> None:
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256:
        raise DownloadError(f"{source or path}: sha256 is {actual}, expected {sha256}; the file is corrupt "
                            f"or not the one expected")
