"""Point-cloud files: read PCD (DATA ascii / binary / binary_compressed), PLY (ascii, binary little and big
endian), OFF, XYZ/TXT and NPY into one ``PointCloud``; write PCD (all three encodings), PLY (binary little endian)
and NPY.

Conventions:
- ``points`` is float32 [N, 3] (x, y, z) in file order, whatever the stored type (float64 coordinates are
  rounded to float32). Invalid points (NaN coordinates, as in organised Kinect
  clouds) are kept, so an organised cloud keeps its pixel grid; ``cloud.valid`` marks the points whose x, y and z
  are all finite.
- ``fields`` holds every other per-point quantity, in file order: [N] for a scalar, [N, k] for a PCD field with
  COUNT k, in the file's dtype (a uint32 ``label`` stays uint32). Colours are ``colors`` uint8 [N, 3] (R, G, B):
  unpacked from a PCD's packed ``rgb``/``rgba`` (0xAARRGGBB, float- or uint-typed), or PLY ``red``/``green``/
  ``blue``. The alpha byte of a PCD ``rgba`` is dropped (writers fill it with 0 or 255 as often as with an
  alpha); a PLY ``alpha`` property is an ordinary field. Every other name is kept as written (``label``,
  ``intensity``, ``normal_x``, PLY ``nx``, ``scalar_*``, ``class`` ...).
- ``width`` x ``height`` is a PCD's organisation (height > 1: an image-shaped cloud, points row-major); every
  other format is unorganised (width = N, height = 1). ``viewpoint`` is the PCD VIEWPOINT (tx ty tz qw qx qy qz).
- Writers are atomic (a temporary file beside the target, renamed onto it) and refuse to replace an existing
  file unless ``overwrite=True``.

Bad files raise ``PointCloudFileError`` naming the file and what is wrong with it (the header key, the byte
count expected and found, the line ...). open3d is not needed: every format is parsed here, because open3d drops
PCD/PLY fields it does not know (labels, intensities).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtp.files import atomic_path

READ_SUFFIXES = (".pcd", ".ply", ".off", ".xyz", ".txt", ".npy")
WRITE_SUFFIXES = (".pcd", ".ply", ".npy")
PCD_ENCODINGS = ("ascii", "binary", "binary_compressed")
DEFAULT_VIEWPOINT = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
_PCD_KEYS = ("VERSION", "FIELDS", "COLUMNS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS",
             "DATA")
_PCD_MAX_HEADER = 1 << 20      # bytes: a header is a few hundred; past this the file is not a PCD
_LZF_MAX_OFFSET = 8192         # a back-reference reaches at most 8 KiB back
_LZF_MAX_MATCH = 264           # and copies at most 7 + 255 + 2 bytes
_LZF_MAX_LITERAL = 32


class PointCloudFileError(ValueError):
    """A point-cloud file that cannot be used; the message names the file and what is wrong with it."""


@dataclass(eq=False)
class PointCloud:
    """N points with their per-point fields; see the module docstring for the conventions."""
    points: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    width: int | None = None                      # None: N (unorganised)
    height: int = 1
    viewpoint: tuple[float, ...] = DEFAULT_VIEWPOINT
    source: Path | None = None

    def __post_init__(self):
        points = np.asarray(self.points)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be [N, 3], got shape {points.shape}")
        self.points = points if points.dtype == np.float32 else points.astype(np.float32)
        n = len(self.points)
        fields = {}
        for name, values in self.fields.items():
            values = np.asarray(values)
            if values.ndim not in (1, 2) or len(values) != n:
                raise ValueError(f"field {name!r} must be [N] or [N, k] with N = {n} points, got shape {values.shape}")
            fields[name] = values
        colors = fields.get("colors")
        if colors is not None and (colors.shape != (n, 3) or colors.dtype != np.uint8):
            raise ValueError(f"field 'colors' must be uint8 [N, 3] (0-255), got {colors.dtype} {colors.shape}")
        self.fields = fields
        if self.width is None:
            self.width = n // self.height if self.height else 0
        self.width, self.height = int(self.width), int(self.height)
        if self.width * self.height != n:
            raise ValueError(f"width x height = {self.width} x {self.height} does not match {n} points")
        viewpoint = tuple(float(v) for v in self.viewpoint)
        if len(viewpoint) != 7:
            raise ValueError(f"viewpoint must be 7 numbers (tx ty tz qw qx qy qz), got {len(viewpoint)}")
        self.viewpoint = viewpoint
        if self.source is not None:
            self.source = Path(self.source)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def valid(self) -> np.ndarray:
        """bool [N]: x, y and z all finite."""
        return np.isfinite(self.points).all(axis=1)

    @property
    def organized(self) -> bool:
        return self.height > 1


# ---------------------------------------------------------------------------------------------- dispatch
def read_points(path: str | Path, columns: list[str] | None = None) -> PointCloud:
    """Read any supported point-cloud file, chosen by suffix (see ``READ_SUFFIXES``).

    ``columns`` names the columns after x, y, z of an .xyz/.txt file or a plain [N, k] .npy array (or all k
    columns, starting with x y z); without it they are named as ``read_xyz`` describes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise PointCloudFileError(f"{path}: unsupported point-cloud suffix {path.suffix!r}; "
                                  f"supported: {', '.join(READ_SUFFIXES)}")
    if columns is not None and suffix not in (".xyz", ".txt", ".npy"):
        raise ValueError(f"{path}: columns= only applies to .xyz/.txt/.npy files, not {suffix}")
    if suffix == ".pcd":
        return read_pcd(path)
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".off":
        return read_off(path)
    if suffix == ".npy":
        return read_npy(path, columns=columns)
    return read_xyz(path, columns=columns)


def write_points(path: str | Path, cloud: PointCloud, overwrite: bool = False, **options) -> Path:
    """Write ``cloud`` by suffix: .pcd (``data=`` "binary" | "ascii" | "binary_compressed"), .ply (binary little
    endian) or .npy (a structured array). Atomic; an existing file is an error unless ``overwrite``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pcd":
        return write_pcd(path, cloud, overwrite=overwrite, **options)
    if options:
        raise TypeError(f"{path}: unexpected options for {suffix} output: {sorted(options)}")
    if suffix == ".ply":
        return write_ply(path, cloud, overwrite=overwrite)
    if suffix == ".npy":
        return write_npy(path, cloud, overwrite=overwrite)
    raise PointCloudFileError(f"{path}: cannot write point-cloud suffix {path.suffix!r}; "
                              f"supported: {', '.join(WRITE_SUFFIXES)}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PointCloudFileError(f"{path}: no such file")
    if not path.is_file():
        raise PointCloudFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise PointCloudFileError(f"{path}: empty file (0 bytes)")


def _read_file(path: Path) -> bytes:
    _check_file(path)
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------- LZF
def lzf_decompress(src: bytes, size: int, where: str = "LZF data") -> bytes:
    """Decompress an LZF stream (liblzf's format, as PCD binary_compressed uses) that must expand to ``size`` bytes.

    Tokens: a control byte < 32 starts a literal run of ctrl + 1 bytes; otherwise it is a back-reference of
    (ctrl >> 5) + 2 bytes (ctrl >> 5 == 7: plus the next byte) starting ((ctrl & 31) << 8) + next byte + 1 bytes
    back in the output. The loop runs once per token and copies with slices, so a 6 MB PCD takes well under a
    second.
    """
    src = bytes(src)
    out = bytearray(size)
    n = len(src)
    ip = op = 0
    try:
        while ip < n:
            ctrl = src[ip]
            ip += 1
            if ctrl < 32:
                length = ctrl + 1
                if ip + length > n:
                    raise PointCloudFileError(f"{where}: a literal run of {length} bytes at input byte {ip - 1} "
                                              f"passes the end of the compressed data ({n} bytes)")
                if op + length > size:
                    raise PointCloudFileError(f"{where}: expands past the {size} bytes the header declares")
                out[op:op + length] = src[ip:ip + length]
                ip += length
                op += length
            else:
                length = ctrl >> 5
                if length == 7:
                    length += src[ip]
                    ip += 1
                length += 2
                ref = op - ((ctrl & 31) << 8) - src[ip] - 1
                ip += 1
                if ref < 0:
                    raise PointCloudFileError(f"{where}: a back-reference at input byte {ip} points "
                                              f"{op - ref} bytes back, before the start of the output ({op} bytes)")
                if op + length > size:
                    raise PointCloudFileError(f"{where}: expands past the {size} bytes the header declares")
                distance = op - ref
                if distance >= length:
                    out[op:op + length] = out[ref:ref + length]
                else:
                    # An overlapping copy repeats the last `distance` bytes (a run): build it by repetition.
                    out[op:op + length] = (out[ref:op] * (length // distance + 1))[:length]
                op += length
    except IndexError:
        raise PointCloudFileError(f"{where}: the compressed data ends inside a back-reference "
                                  f"(truncated after {n} bytes)") from None
    if op != size:
        raise PointCloudFileError(f"{where}: decompresses to {op} bytes, the header declares {size}")
    return bytes(out)


def lzf_compress(data: bytes) -> bytes:
    """A valid LZF stream for ``data``: literal runs, plus back-references for every stretch of 4+ bytes equal to
    the bytes 4 earlier (offset 4).

    Not liblzf's hash-chain search: in a PCD's column-major blob that offset catches what repeats most (runs of
    equal 4-byte values: NaN coordinates, constant labels, equal colours) at numpy speed. Any LZF decoder reads it.
    """
    a = np.frombuffer(data, dtype=np.uint8)
    n = len(a)
    same = np.zeros(n + 2, dtype=np.int8)
    if n > 4:
        same[5:n + 1] = a[4:] == a[:-4]
    edges = np.diff(same)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= 4  # shorter matches save nothing over literals
    parts: list[bytes] = []
    pos = 0
    for start, end in zip(starts[keep].tolist(), ends[keep].tolist()):
        _lzf_literals(parts, data, pos, start)
        remaining = end - start
        while remaining:
            take = min(remaining, _LZF_MAX_MATCH)
            if 0 < remaining - take < 3:  # a back-reference copies at least 3 bytes: leave enough for the last
                take -= 3
            code = take - 2
            if code < 7:
                parts.append(bytes((code << 5, 3)))           # offset 4 is stored as 4 - 1
            else:
                parts.append(bytes((7 << 5, code - 7, 3)))
            remaining -= take
        pos = end
    _lzf_literals(parts, data, pos, n)
    return b"".join(parts)


def _lzf_literals(parts: list[bytes], data: bytes, start: int, end: int) -> None:
    for i in range(start, end, _LZF_MAX_LITERAL):
        chunk = data[i:min(i + _LZF_MAX_LITERAL, end)]
        parts.append(bytes((len(chunk) - 1,)))
        parts.append(chunk)


# ---------------------------------------------------------------------------------------------- PCD
_PCD_DTYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8",
               ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8"}


@dataclass
class _PCDField:
    name: str
    type: str
    size: int
    count: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_PCD_DTYPES[(self.type, self.size)])


def _pcd_header(path: Path, raw: bytes) -> tuple[dict[str, list[str]], int]:
    entries: dict[str, list[str]] = {}
    pos, line_no = 0, 0
    while True:
        if pos >= len(raw) or pos > _PCD_MAX_HEADER:
            raise PointCloudFileError(f"{path}: PCD header has no DATA line"
                                      + (f" within its first {_PCD_MAX_HEADER} bytes" if pos < len(raw) else ""))
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        line_no += 1
        try:
            text = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError:
            raise PointCloudFileError(f"{path}: not a PCD file: header line {line_no} is not text") from None
        pos = end + 1
        if not text or text.startswith("#"):
            continue
        key, *values = text.split()
        key = key.upper()
        if key not in _PCD_KEYS:
            raise PointCloudFileError(f"{path}: header line {line_no}: unknown PCD key {key[:40]!r} "
                                      f"(expected one of {' '.join(_PCD_KEYS)})")
        entries["FIELDS" if key == "COLUMNS" else key] = values  # COLUMNS: PCD v0.5's name for FIELDS
        if key == "DATA":
            return entries, min(pos, len(raw))


def _header_ints(path: Path, entries: dict, key: str, count: int | None = None) -> list[int]:
    values = entries[key]
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        raise PointCloudFileError(f"{path}: PCD header {key} {' '.join(values)!r}: expected integers") from None
    if count is not None and len(numbers) != count:
        raise PointCloudFileError(f"{path}: PCD header {key} has {len(numbers)} values, FIELDS names {count}")
    if any(v < 0 for v in numbers):
        raise PointCloudFileError(f"{path}: PCD header {key} {' '.join(values)}: negative value")
    return numbers


def _pcd_layout(path: Path, entries: dict) -> tuple[list[_PCDField], int, int, tuple, str]:
    for key in ("FIELDS", "SIZE", "TYPE", "WIDTH"):
        if key not in entries:
            raise PointCloudFileError(f"{path}: PCD header has no {key} line")
    names = entries["FIELDS"]
    if not names:
        raise PointCloudFileError(f"{path}: PCD header FIELDS names no field")
    sizes = _header_ints(path, entries, "SIZE", len(names))
    types = [t.upper() for t in entries["TYPE"]]
    if len(types) != len(names):
        raise PointCloudFileError(f"{path}: PCD header TYPE has {len(types)} values, FIELDS names {len(names)}")
    counts = _header_ints(path, entries, "COUNT", len(names)) if "COUNT" in entries else [1] * len(names)
    fields = []
    for name, kind, size, count in zip(names, types, sizes, counts):
        if (kind, size) not in _PCD_DTYPES:
            raise PointCloudFileError(f"{path}: PCD field {name!r} has TYPE {kind} SIZE {size}; expected TYPE F "
                                      f"with SIZE 4/8, or U/I with SIZE 1/2/4/8")
        if count < 1:
            raise PointCloudFileError(f"{path}: PCD field {name!r} has COUNT {count}; expected 1 or more")
        fields.append(_PCDField(name, kind, size, count))
    for axis in ("x", "y", "z"):
        if axis not in names:
            raise PointCloudFileError(f"{path}: PCD FIELDS {' '.join(names)!r} has no {axis!r} field")
        if counts[names.index(axis)] != 1:
            raise PointCloudFileError(f"{path}: PCD field {axis!r} has COUNT {counts[names.index(axis)]}, expected 1")
    (width,) = _header_ints(path, entries, "WIDTH", 1)
    (height,) = _header_ints(path, entries, "HEIGHT", 1) if "HEIGHT" in entries else (1,)
    (points,) = _header_ints(path, entries, "POINTS", 1) if "POINTS" in entries else (width * height,)
    if points != width * height:
        raise PointCloudFileError(f"{path}: PCD header POINTS {points} != WIDTH x HEIGHT = {width} x {height}")
    viewpoint = DEFAULT_VIEWPOINT
    if "VIEWPOINT" in entries:
        try:
            viewpoint = tuple(float(v) for v in entries["VIEWPOINT"])
        except ValueError:
            viewpoint = ()
        if len(viewpoint) != 7:
            raise PointCloudFileError(f"{path}: PCD header VIEWPOINT {' '.join(entries['VIEWPOINT'])!r}: "
                                      f"expected 7 numbers (tx ty tz qw qx qy qz)")
    data = entries["DATA"][0].lower() if entries["DATA"] else ""
    if data not in PCD_ENCODINGS:
        raise PointCloudFileError(f"{path}: PCD header DATA {' '.join(entries['DATA'])!r}: "
                                  f"expected one of {', '.join(PCD_ENCODINGS)}")
    return fields, width, height, viewpoint, data


def read_pcd(path: str | Path) -> PointCloud:
    """Read a PCD file (v0.5-0.7; DATA ascii, binary or binary_compressed) with all its fields.

    Fields named ``_`` (PCL's padding) are skipped; x, y, z become float32 ``points`` whatever their stored type.
    """
    path = Path(path)
    raw = _read_file(path)
    entries, start = _pcd_header(path, raw)
    fields, width, height, viewpoint, data = _pcd_layout(path, entries)
    n = width * height
    body = memoryview(raw)[start:]
    if data == "ascii":
        columns = _pcd_ascii(path, bytes(body), fields, n)
    elif data == "binary":
        columns = _pcd_binary(path, body, fields, n)
    else:
        columns = _pcd_compressed(path, body, fields, n)
    points = np.stack([columns["x"][:, 0], columns["y"][:, 0], columns["z"][:, 0]], axis=1).astype(np.float32)
    out: dict[str, np.ndarray] = {}
    for f in fields:
        if f.name in ("x", "y", "z", "_"):
            continue
        values = columns[f.name]
        if f.name in ("rgb", "rgba") and f.size == 4 and f.count == 1:
            # Packed 0xAARRGGBB; float-typed rgb only borrows the float's bits.
            bits = np.ascontiguousarray(values[:, 0]).view(np.uint32)
            out["colors"] = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1).astype(np.uint8)
            continue
        out[f.name] = values[:, 0] if f.count == 1 else values
    return PointCloud(points, out, width=width, height=height, viewpoint=viewpoint, source=path)


def _pcd_ascii(path: Path, body: bytes, fields: list[_PCDField], n: int) -> dict[str, np.ndarray]:
    per_point = sum(f.count for f in fields)
    tokens = body.split()
    if len(tokens) != n * per_point:
        lines = [line for line in body.splitlines() if line.strip()]
        bad = next((i for i, line in enumerate(lines) if len(line.split()) != per_point), None)
        where = (f"; data line {bad + 1} has {len(lines[bad].split())}" if bad is not None and bad < n else "")
        raise PointCloudFileError(f"{path}: PCD ascii data holds {len(tokens)} values, the header declares "
                                  f"{n} points x {per_point} values{where}")
    table = np.array(tokens).reshape(n, per_point) if n else np.empty((0, per_point), dtype="S1")
    columns, col = {}, 0
    for f in fields:
        text = table[:, col:col + f.count]
        col += f.count
        try:
            if f.type == "F" and f.name in ("rgb", "rgba") and f.size == 4:
                # PCL writes a float-typed rgb as the integer of its bits, open3d as the float itself.
                integer = np.array([re.fullmatch(rb"\+?\d+", v) is not None for v in text.ravel().tolist()],
                                   dtype=bool).reshape(text.shape)
                bits = np.zeros(text.shape, dtype=np.uint32)
                bits[integer] = text[integer].astype(np.uint32)
                bits[~integer] = text[~integer].astype(np.float32).view(np.uint32)
                values = bits.view(np.float32)
            else:
                values = text.astype(f.dtype)
        except (ValueError, OverflowError) as err:
            raise PointCloudFileError(f"{path}: PCD ascii field {f.name!r} (TYPE {f.type} SIZE {f.size}): "
                                      f"a value is not a valid {f.dtype.name} ({err})") from None
        columns[f.name] = values
    return columns


def _pcd_binary(path: Path, body: memoryview, fields: list[_PCDField], n: int) -> dict[str, np.ndarray]:
    record = np.dtype([(f"f{i}", f.dtype, (f.count,)) for i, f in enumerate(fields)])
    need = n * record.itemsize
    if len(body) < need:
        raise PointCloudFileError(f"{path}: truncated PCD binary data: expected {need} bytes ({n} points x "
                                  f"{record.itemsize} bytes), got {len(body)}")
    table = np.frombuffer(body, dtype=record, count=n)
    return {f.name: np.array(table[f"f{i}"]).reshape(n, f.count) for i, f in enumerate(fields)}


def _pcd_compressed(path: Path, body: memoryview, fields: list[_PCDField], n: int) -> dict[str, np.ndarray]:
    if len(body) < 8:
        raise PointCloudFileError(f"{path}: truncated PCD binary_compressed data: expected 8 bytes of "
                                  f"compressed/uncompressed sizes after the header, got {len(body)}")
    compressed, uncompressed = np.frombuffer(body, dtype="<u4", count=2).tolist()
    row = sum(f.size * f.count for f in fields)
    if uncompressed != n * row:
        raise PointCloudFileError(f"{path}: PCD binary_compressed uncompressed size {uncompressed} bytes, "
                                  f"expected {n * row} ({n} points x {row} bytes)")
    if len(body) - 8 < compressed:
        raise PointCloudFileError(f"{path}: truncated PCD binary_compressed data: expected {compressed} "
                                  f"compressed bytes, got {len(body) - 8}")
    blob = lzf_decompress(body[8:8 + compressed], uncompressed, where=f"{path}: PCD binary_compressed data")
    columns, offset = {}, 0
    for f in fields:  # column-major: every point's value of one field, then the next field
        count = n * f.count
        columns[f.name] = np.frombuffer(blob, dtype=f.dtype, count=count, offset=offset).reshape(n, f.count).copy()
        offset += count * f.size
    return columns


def _pcd_columns(cloud: PointCloud) -> list[tuple[str, np.ndarray]]:
    """(name, [N, count] array) per PCD field: x y z, then the cloud's fields with colors packed into rgb."""
    n = len(cloud)
    columns = [(axis, cloud.points[:, i:i + 1]) for i, axis in enumerate("xyz")]
    for name, values in cloud.fields.items():
        if name == "colors":
            c = values.astype(np.uint32)
            bits = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
            columns.append(("rgb", bits.reshape(n, 1)))
            continue
        if name in ("x", "y", "z") or not name or any(ch.isspace() for ch in name):
            raise ValueError(f"field name {name!r} cannot be written to a PCD (reserved or contains spaces)")
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)
        if values.dtype.kind not in "uif" or (values.dtype.kind == "f" and values.dtype.itemsize not in (4, 8)) \
                or values.dtype.itemsize > 8:
            raise ValueError(f"field {name!r}: dtype {values.dtype} has no PCD type (float32/64, (u)int8-64, bool)")
        columns.append((name, values.reshape(n, 1) if values.ndim == 1 else values))
    return columns


def write_pcd(path: str | Path, cloud: PointCloud, data: str = "binary", overwrite: bool = False) -> Path:
    """Write ``cloud`` as a PCD v0.7 file with DATA ``data`` (ascii, binary or binary_compressed), every field
    included (colors as a packed uint32 ``rgb``, as PCL and open3d write it).

    binary_compressed uses ``lzf_compress``, a simple valid LZF encoder (literal runs and offset-4 matches).
    ascii writes floats with 9 (float32) or 17 (float64) significant digits, enough to read back exactly.
    """
    path = Path(path)
    if data not in PCD_ENCODINGS:
        raise ValueError(f"{path}: data={data!r}; expected one of {', '.join(PCD_ENCODINGS)}")
    n = len(cloud)
    columns = _pcd_columns(cloud)
    kinds = {"f": "F", "u": "U", "i": "I"}
    viewpoint = " ".join(_number_text(v) for v in cloud.viewpoint)
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
              f"FIELDS {' '.join(name for name, _ in columns)}\n"
              f"SIZE {' '.join(str(v.dtype.itemsize) for _, v in columns)}\n"
              f"TYPE {' '.join(kinds[v.dtype.kind] for _, v in columns)}\n"
              f"COUNT {' '.join(str(v.shape[1]) for _, v in columns)}\n"
              f"WIDTH {cloud.width}\nHEIGHT {cloud.height}\nVIEWPOINT {viewpoint}\nPOINTS {n}\nDATA {data}\n")
    if data == "ascii":
        body = _ascii_rows([v for _, v in columns], n)
    elif data == "binary":
        body = _records([v for _, v in columns], n, "<").tobytes()
    else:
        blob = b"".join(np.ascontiguousarray(v.astype(v.dtype.newbyteorder("<"))).tobytes() for _, v in columns)
        packed = lzf_compress(blob)
        body = np.array([len(packed), len(blob)], dtype="<u4").tobytes() + packed
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(header.encode("ascii") + body)
    return path


def _records(columns: list[np.ndarray], n: int, endian: str) -> np.ndarray:
    record = np.dtype([(f"f{i}", v.dtype.newbyteorder(endian), (v.shape[1],)) for i, v in enumerate(columns)])
    table = np.empty(n, dtype=record)
    for i, v in enumerate(columns):
        table[f"f{i}"] = v
    return table


def _ascii_rows(columns: list[np.ndarray], n: int) -> bytes:
    texts = []
    for values in columns:
        fmt = "%.9g" if values.dtype == np.float32 else "%.17g" if values.dtype.kind == "f" else "%d"
        for k in range(values.shape[1]):
            texts.append([fmt % v for v in values[:, k].tolist()])
    return "".join(" ".join(row) + "\n" for row in zip(*texts)).encode("ascii") if n else b""


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# ---------------------------------------------------------------------------------------------- PLY
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_PLY_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint", "f4": "float",
              "f8": "double"}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


@dataclass
class _PLYElement:
    name: str
    count: int
    properties: list = field(default_factory=list)   # (name, dtype) or (name, count dtype, item dtype)


def _ply_header(path: Path, raw: bytes) -> tuple[str, list[_PLYElement], int]:
    if not raw.startswith(b"ply"):
        raise PointCloudFileError(f"{path}: not a PLY file (it does not start with 'ply')")
    match = re.search(rb"end_header[ \t]*\r?\n", raw[:_PCD_MAX_HEADER])
    if match is None:
        raise PointCloudFileError(f"{path}: PLY header has no end_header line")
    try:
        lines = raw[:match.start()].decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise PointCloudFileError(f"{path}: PLY header is not ASCII text") from None
    fmt, elements = None, []
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        where = f"{path}: PLY header line {number} {line.strip()!r}"
        if words[0] == "format":
            if len(words) < 2 or words[1] not in _PLY_FORMATS:
                raise PointCloudFileError(f"{where}: expected format {' | '.join(_PLY_FORMATS)}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PointCloudFileError(f"{where}: expected 'element <name> <count>'")
            elements.append(_PLYElement(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise PointCloudFileError(f"{where}: property before any element")
            if len(words) == 5 and words[1] == "list" and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                elements[-1].properties.append((words[4], _PLY_TYPES[words[2]], _PLY_TYPES[words[3]]))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise PointCloudFileError(f"{where}: expected 'property <type> <name>' or 'property list <count "
                                          f"type> <item type> <name>' with types {', '.join(_PLY_TYPES)}")
        else:
            raise PointCloudFileError(f"{where}: unknown PLY header keyword {words[0]!r}")
    if fmt is None:
        raise PointCloudFileError(f"{path}: PLY header has no format line")
    return fmt, elements, match.end()


def read_ply(path: str | Path) -> PointCloud:
    """Read the vertex element of a PLY file (ascii, binary_little_endian or binary_big_endian) with every vertex
    property; other elements (faces, edges) are skipped. uchar ``red``/``green``/``blue`` become ``colors``."""
    path = Path(path)
    raw = _read_file(path)
    fmt, elements, start = _ply_header(path, raw)
    index = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
    if index is None:
        raise PointCloudFileError(f"{path}: PLY header has no 'vertex' element")
    vertex = elements[index]
    names = [p[0] for p in vertex.properties]
    for axis in ("x", "y", "z"):
        if axis not in names:
            raise PointCloudFileError(f"{path}: PLY vertex element has no {axis!r} property (has {', '.join(names)})")
    lists = [p[0] for p in vertex.properties if len(p) == 3]
    if lists:
        raise PointCloudFileError(f"{path}: PLY vertex list properties ({', '.join(lists)}) are not supported")
    if fmt == "ascii":
        values = _ply_ascii(path, raw[start:], elements, index)
    else:
        values = _ply_binary(path, memoryview(raw)[start:], elements, index, _PLY_FORMATS[fmt])
    points = np.stack([values["x"], values["y"], values["z"]], axis=1).astype(np.float32)
    fields: dict[str, np.ndarray] = {}
    rgb = ("red", "green", "blue")
    as_colors = all(c in values and values[c].dtype == np.uint8 for c in rgb)
    for name in names:
        if name in ("x", "y", "z"):
            continue
        if as_colors and name in rgb:
            if name == "red":
                fields["colors"] = np.stack([values[c] for c in rgb], axis=1)
            continue
        fields[name] = values[name]
    return PointCloud(points, fields, source=path)


def _ply_ascii(path: Path, body: bytes, elements: list[_PLYElement], index: int) -> dict[str, np.ndarray]:
    lines = [line for line in body.splitlines() if line.strip()]
    skip = sum(e.count for e in elements[:index])  # one line per element instance, lists included
    vertex = elements[index]
    rows = lines[skip:skip + vertex.count]
    if len(rows) < vertex.count:
        raise PointCloudFileError(f"{path}: truncated PLY ascii data: expected {vertex.count} vertex lines, "
                                  f"got {len(rows)}")
    width = len(vertex.properties)
    tokens = b" ".join(rows).split()
    if len(tokens) != vertex.count * width:
        bad = next(i for i, row in enumerate(rows) if len(row.split()) != width)
        raise PointCloudFileError(f"{path}: PLY ascii vertex {bad}: {len(rows[bad].split())} values, "
                                  f"expected {width} ({' '.join(p[0] for p in vertex.properties)})")
    table = np.array(tokens).reshape(vertex.count, width) if vertex.count else np.empty((0, width), dtype="S1")
    values = {}
    for col, (name, dtype) in enumerate(vertex.properties):
        try:
            values[name] = _ascii_column(table[:, col], dtype)
        except (ValueError, OverflowError) as err:
            raise PointCloudFileError(f"{path}: PLY ascii vertex property {name!r} ({_PLY_NAMES[dtype]}): "
                                      f"a value is not a valid {_PLY_NAMES[dtype]} ({err})") from None
    return values


def _ply_binary(path: Path, body: memoryview, elements: list[_PLYElement], index: int,
                endian: str) -> dict[str, np.ndarray]:
    offset = 0
    for element in elements[:index]:
        offset = _skip_ply_element(path, body, element, offset, endian)
    vertex = elements[index]
    record = np.dtype([(f"p{i}", endian + dtype) for i, (_, dtype) in enumerate(vertex.properties)])
    need = vertex.count * record.itemsize
    if len(body) - offset < need:
        raise PointCloudFileError(f"{path}: truncated PLY binary data: expected {need} bytes of vertices "
                                  f"({vertex.count} x {record.itemsize}), got {max(len(body) - offset, 0)}")
    table = np.frombuffer(body, dtype=record, count=vertex.count, offset=offset)
    return {name: table[f"p{i}"].astype(dtype) for i, (name, dtype) in enumerate(vertex.properties)}


def _ascii_column(text: np.ndarray, dtype: str) -> np.ndarray:
    try:
        return text.astype(dtype)
    except ValueError:
        if dtype[0] == "f":
            raise
    values = text.astype(np.float64)  # some writers print integer properties as 12.0
    if not _integral(values):
        raise ValueError("non-integral value in an integer property")
    return values.astype(dtype)


def _skip_ply_element(path: Path, body: memoryview, element: _PLYElement, offset: int, endian: str) -> int:
    if all(len(p) == 2 for p in element.properties):
        return offset + element.count * sum(np.dtype(p[1]).itemsize for p in element.properties)
    # An element with lists before the vertices (rare): walk it instance by instance.
    for _ in range(element.count):
        for prop in element.properties:
            if len(prop) == 2:
                offset += np.dtype(prop[1]).itemsize
                continue
            count_type = np.dtype(endian + prop[1])
            if offset + count_type.itemsize > len(body):
                raise PointCloudFileError(f"{path}: truncated PLY binary data in element {element.name!r}")
            count = int(np.frombuffer(body, dtype=count_type, count=1, offset=offset)[0])
            offset += count_type.itemsize + count * np.dtype(prop[2]).itemsize
    return offset


def write_ply(path: str | Path, cloud: PointCloud, overwrite: bool = False) -> Path:
    """Write ``cloud`` as a binary little-endian PLY of vertices: float x y z, uchar red green blue, then
    every other field as a property (an [N, k] field as ``name_0`` ... ``name_{k-1}``)."""
    path = Path(path)
    n = len(cloud)
    props: list[tuple[str, np.ndarray]] = [(axis, cloud.points[:, i]) for i, axis in enumerate("xyz")]
    for name, values in cloud.fields.items():
        if name == "colors":
            props += [(c, values[:, i]) for i, c in enumerate(("red", "green", "blue"))]
            continue
        if name in ("x", "y", "z") or not name or any(ch.isspace() for ch in name):
            raise ValueError(f"field name {name!r} cannot be written to a PLY (reserved or contains spaces)")
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)
        if values.dtype.str[1:] not in _PLY_NAMES:
            raise ValueError(f"field {name!r}: dtype {values.dtype} has no PLY type "
                             f"(PLY stores (u)int8/16/32, float32/64)")
        props += [(name, values)] if values.ndim == 1 else \
            [(f"{name}_{k}", values[:, k]) for k in range(values.shape[1])]
    header = "ply\nformat binary_little_endian 1.0\ncomment written by mtp\n" f"element vertex {n}\n"
    header += "".join(f"property {_PLY_NAMES[v.dtype.str[1:]]} {name}\n" for name, v in props) + "end_header\n"
    table = _records([v.reshape(n, 1) for _, v in props], n, "<")
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(header.encode("ascii") + table.tobytes())
    return path


# ---------------------------------------------------------------------------------------------- OFF
def read_off(path: str | Path) -> PointCloud:
    """Read the vertices of an OFF file (also COFF: + colours, NOFF: + normals ``nx ny nz``, CNOFF); faces are
    ignored. COFF colours may be 0-255 integers or 0-1 floats; their alpha is dropped."""
    path = Path(path)
    raw = _read_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PointCloudFileError(f"{path}: not a text OFF file (binary OFF is not supported)") from None
    lines = [line.split("#", 1)[0].split() for line in text.splitlines()]
    lines = [line for line in lines if line]
    keyword = lines[0][0] if lines else ""
    prefix = keyword[:-3]
    if not keyword.endswith("OFF") or prefix not in ("", "C", "N", "CN", "NC"):
        raise PointCloudFileError(f"{path}: not an OFF file: starts with {keyword[:20]!r}, expected "
                                  f"OFF, COFF, NOFF or CNOFF")
    first_vertex = 1 if len(lines[0]) > 1 else 2   # the counts may share the keyword's line
    counts = lines[0][1:] if first_vertex == 1 else (lines[1] if len(lines) > 1 else [])
    try:
        n_vertices, _faces, _edges = (int(t) for t in counts[:3])
    except ValueError:
        n_vertices = -1
    if n_vertices < 0:
        raise PointCloudFileError(f"{path}: OFF counts {' '.join(counts)!r}: expected "
                                  f"'<vertices> <faces> <edges>' non-negative integers")
    body = [t for line in lines[first_vertex:] for t in line]
    per_vertex = 3 + 3 * ("N" in prefix)
    if "C" in prefix:
        # Colours are 3 or 4 numbers (RGB[A]): the first vertex line tells which.
        first = lines[first_vertex] if len(lines) > first_vertex else []
        per_vertex += 3 if len(first) == per_vertex + 3 else 4
    if len(body) < n_vertices * per_vertex:
        raise PointCloudFileError(f"{path}: truncated OFF: {n_vertices} vertices x {per_vertex} values expected, "
                                  f"the file holds {len(body)} values after the counts")
    try:
        table = np.array(body[:n_vertices * per_vertex], dtype=np.float64).reshape(n_vertices, per_vertex)
    except ValueError as err:
        raise PointCloudFileError(f"{path}: OFF vertex values are not all numbers ({err})") from None
    fields: dict[str, np.ndarray] = {}
    col = 3
    if "N" in prefix:
        fields.update(nx=table[:, 3].astype(np.float32), ny=table[:, 4].astype(np.float32),
                      nz=table[:, 5].astype(np.float32))
        col = 6
    if "C" in prefix:
        rgb = table[:, col:col + 3]
        scale = 255.0 if rgb.size and rgb.max() <= 1.0 and not _integral(rgb) else 1.0
        fields["colors"] = np.clip(np.round(rgb * scale), 0, 255).astype(np.uint8)
    return PointCloud(table[:, :3], fields, source=path)


# ---------------------------------------------------------------------------------------------- XYZ / TXT / NPY
def read_xyz(path: str | Path, columns: list[str] | None = None) -> PointCloud:
    """Read a text table of points, one per line: x y z then extra columns, separated by whitespace or commas.

    Lines starting with ``#`` or ``//`` are comments; a first line that is not numbers is a header naming the
    columns. Extra columns are named by ``columns`` (the extra ones, or all of them starting with x y z), else by
    the header, else ``feat_0``, ``feat_1`` ...; without names, 3 or 6 extra columns whose first (or second) three
    are integers in 0-255 (not all 0/1) are ``colors``. Named ``r g b`` / ``red green blue`` become ``colors`` too.
    Integral columns are int64, others float32.
    """
    path = Path(path)
    raw = _read_file(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PointCloudFileError(f"{path}: not a text file (not UTF-8)") from None
    numbered = [(i + 1, line.replace(",", " ").split()) for i, line in enumerate(text.splitlines())
                if line.strip() and not line.lstrip().startswith(("#", "//"))]
    header = None
    if numbered and not all(_is_number(t) for t in numbered[0][1]):
        header = numbered.pop(0)[1]
    if not numbered:
        raise PointCloudFileError(f"{path}: no data lines")
    width = len(numbered[0][1])
    for number, tokens in numbered:
        if len(tokens) != width:
            raise PointCloudFileError(f"{path}: line {number} has {len(tokens)} columns, the first data line "
                                      f"has {width}")
    if width < 3:
        raise PointCloudFileError(f"{path}: {width} columns; expected at least x y z")
    try:
        table = np.array([t for _, tokens in numbered for t in tokens], dtype=np.float64).reshape(-1, width)
    except ValueError:
        number, token = next((number, t) for number, tokens in numbered for t in tokens if not _is_number(t))
        raise PointCloudFileError(f"{path}: line {number}: {token[:40]!r} is not a number") from None
    names = columns if columns is not None else (header if header is not None and len(header) == width else None)
    return PointCloud(table[:, :3], _extra_columns(path, table[:, 3:], names), source=path)


def read_npy(path: str | Path, columns: list[str] | None = None) -> PointCloud:
    """Read a .npy array: [N, >=3] (x y z, extra columns named as in ``read_xyz``) or a structured array with
    fields x, y, z and others (kept with their dtypes and shapes, as ``write_npy`` writes it)."""
    path = Path(path)
    _check_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise PointCloudFileError(f"{path}: not a readable .npy array ({err})") from None
    if array.dtype.names:
        if columns is not None:
            raise ValueError(f"{path}: columns= names the columns of a plain [N, k] array; this one is structured "
                             f"(fields {', '.join(array.dtype.names)})")
        missing = [a for a in "xyz" if a not in array.dtype.names]
        if array.ndim != 1 or missing:
            raise PointCloudFileError(f"{path}: structured .npy must be 1-D with fields x, y, z; got shape "
                                      f"{array.shape}, fields {', '.join(array.dtype.names)}")
        points = np.stack([array["x"], array["y"], array["z"]], axis=1)
        fields = {name: np.array(array[name]) for name in array.dtype.names if name not in ("x", "y", "z")}
        return PointCloud(points, fields, source=path)
    if array.ndim != 2 or array.shape[1] < 3 or array.dtype.kind not in "uifb":
        raise PointCloudFileError(f"{path}: expected a numeric [N, >=3] array, got {array.dtype} {array.shape}")
    return PointCloud(array[:, :3], _extra_columns(path, array[:, 3:].astype(np.float64), columns), source=path)


def write_npy(path: str | Path, cloud: PointCloud, overwrite: bool = False) -> Path:
    """Write ``cloud`` as a structured .npy array: float32 x, y, z and every field with its dtype and shape."""
    path = Path(path)
    n = len(cloud)
    items = [(axis, cloud.points[:, i]) for i, axis in enumerate("xyz")] + list(cloud.fields.items())
    record = np.dtype([(name, v.dtype, v.shape[1:]) for name, v in items])
    table = np.empty(n, dtype=record)
    for name, values in items:
        table[name] = values
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        np.save(f, table, allow_pickle=False)
    return path


def _extra_columns(path: Path, table: np.ndarray, names: list[str] | None) -> dict[str, np.ndarray]:
    extra = table.shape[1]
    if names is not None:
        names = list(names)
        if len(names) == extra + 3:
            names = names[3:]
        if len(names) != extra:
            raise ValueError(f"{path}: columns= names {len(names)} columns, the file has {extra} after x y z "
                             f"({extra + 3} in all)")
    else:
        names = [f"feat_{i}" for i in range(extra)]
        if extra in (3, 6):
            for start in range(0, extra, 3):
                if _looks_like_colors(table[:, start:start + 3]):
                    names[start:start + 3] = ["red", "green", "blue"]
                    break
    fields: dict[str, np.ndarray] = {}
    lowered = [name.lower() for name in names]
    for trio in (("red", "green", "blue"), ("r", "g", "b")):
        for i in range(extra - 2):
            if tuple(lowered[i:i + 3]) == trio and _looks_like_colors(table[:, i:i + 3], allow_binary=True):
                names[i] = "colors"
                names[i + 1] = names[i + 2] = None
    for i, name in enumerate(names):
        if name == "colors":
            fields["colors"] = table[:, i:i + 3].astype(np.uint8)
        elif name is not None:
            column = table[:, i]
            fields[name] = column.astype(np.int64) if _integral(column) else column.astype(np.float32)
    return fields


def _looks_like_colors(values: np.ndarray, allow_binary: bool = False) -> bool:
    if not values.size or not _integral(values) or values.min() < 0 or values.max() > 255:
        return False
    return allow_binary or values.max() > 1   # all 0/1 are more likely flags or axis-aligned normals


def _integral(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all() and (values == np.round(values)).all())


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
