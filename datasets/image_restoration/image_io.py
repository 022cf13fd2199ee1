"""Reading and writing images for restoration pipelines (OpenCV backend).

``read_image`` always returns RGB float32 in [0, 1] plus what is needed to write the result back
in the same form (bit depth, grayness, alpha). It refuses broken files loudly: OpenCV happily
returns a half-grey image for a truncated JPEG, so every container is checked structurally before
decoding (PNG chunks + CRCs up to IEND, JPEG segments and scans up to EOI, TIFF strip extents,
BMP/WebP declared sizes).
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EIGHT_BIT_ONLY = (".jpg", ".jpeg", ".webp", ".bmp")


class ImageReadError(ValueError):
    """An image file is missing content, is not an image, is truncated or has an unusable layout."""


@dataclass
class Image:
    """A decoded image.

    rgb: float32 H x W x 3 in [0, 1], RGB order (gray sources are replicated to 3 channels).
    alpha: float32 H x W in [0, 1], or None when the file has no alpha channel.
    bit_depth: 8 or 16, the sample depth stored in the file.
    is_gray: the file held a single colour channel.
    path: where it was read from.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    is_gray: bool
    path: Path

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def _png_problem(data: bytes) -> str | None:
    """Walk the PNG chunk list; a complete file has every chunk intact (CRC) up to IEND."""
    if not data.startswith(_PNG_SIGNATURE):
        return "no PNG signature"
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return f"chunk {kind!r} at byte {pos} runs past the end of the file (truncated)"
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            return f"chunk {kind!r} at byte {pos} has a bad CRC (corrupted)"
        if kind == b"IEND":
            return None
        pos = end
    return "file ends before the IEND chunk (truncated)"


def _jpeg_problem(data: bytes) -> str | None:
    """Walk the JPEG marker segments and entropy-coded scans; a complete file reaches EOI."""
    if not data.startswith(b"\xff\xd8"):
        return "no JPEG start-of-image marker"
    pos = 2
    size = len(data)
    while pos < size:
        if data[pos] != 0xFF:
            return f"expected a JPEG marker at byte {pos}"
        while pos < size and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length field
            continue
        if pos + 2 > size:
            break
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        pos += length
        if marker != 0xDA:
            continue
        # Entropy-coded data follows a start-of-scan header; it ends at the first marker that is
        # neither a stuffed 0xFF00 nor a restart marker.
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= size:
                return "file ends inside the compressed image data (truncated)"
            following = data[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                pos += 2
                continue
            break
    return "file ends before the end-of-image marker (truncated)"


def _riff_problem(data: bytes) -> str | None:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return "no RIFF/WEBP header"
    (declared,) = struct.unpack("<I", data[4:8])
    if declared + 8 > len(data):
        return f"header declares {declared + 8} bytes but the file has {len(data)} (truncated)"
    return None


def _bmp_problem(data: bytes) -> str | None:
    if len(data) < 14 or data[:2] != b"BM":
        return "no BMP header"
    (declared,) = struct.unpack("<I", data[2:6])
    if declared > len(data):
        return f"header declares {declared} bytes but the file has {len(data)} (truncated)"
    return None


_TIFF_FIELD_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8
_TIFF_SAMPLES_PER_PIXEL, _TIFF_STRIP_OFFSETS, _TIFF_STRIP_BYTES, _TIFF_TILE_OFFSETS, _TIFF_TILE_BYTES = (
    277, 273, 279, 324, 325)


_TIFF_WIDTH, _TIFF_LENGTH = 256, 257


def _tiff_fields(data: bytes, tags: tuple) -> dict | str:
    """Values of ``tags`` in the first image directory, or a problem string for a broken header."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return "no TIFF header"
    endian = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    if ifd + 2 > len(data):
        return "image directory lies past the end of the file (truncated)"
    (entries,) = struct.unpack(endian + "H", data[ifd:ifd + 2])
    if ifd + 2 + 12 * entries > len(data):
        return "image directory runs past the end of the file (truncated)"
    fields = {}
    for start in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        tag, kind, count = struct.unpack(endian + "HHI", data[start:start + 8])
        code = _TIFF_FIELD_TYPES.get(kind)
        if code is None or tag not in tags:
            continue
        size = struct.calcsize(code) * count
        if size <= 4:  # small values are stored inside the entry itself
            raw = data[start + 8:start + 8 + size]
        else:
            (offset,) = struct.unpack(endian + "I", data[start + 8:start + 12])
            raw = data[offset:offset + size]
            if len(raw) < size:
                return f"TIFF field {tag} lies past the end of the file (truncated)"
        fields[tag] = struct.unpack(endian + code * count, raw)
    return fields


def _tiff_problem(data: bytes) -> str | None:
    """Check the first image directory: channel count, and that every strip/tile lies inside the file."""
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        return None  # BigTIFF: left to libtiff
    fields = _tiff_fields(data, (_TIFF_SAMPLES_PER_PIXEL, _TIFF_STRIP_OFFSETS, _TIFF_STRIP_BYTES,
                                 _TIFF_TILE_OFFSETS, _TIFF_TILE_BYTES))
    if isinstance(fields, str):
        return fields
    channels = fields.get(_TIFF_SAMPLES_PER_PIXEL, (1,))[0]
    if channels > 4:
        return f"{channels} channels; expected 1 (gray), 3 (colour) or 4 (colour + alpha)"
    offsets = fields.get(_TIFF_STRIP_OFFSETS) or fields.get(_TIFF_TILE_OFFSETS) or ()
    byte_counts = fields.get(_TIFF_STRIP_BYTES) or fields.get(_TIFF_TILE_BYTES) or ()
    for offset, count in zip(offsets, byte_counts):
        if offset + count > len(data):
            return f"image data at bytes {offset}..{offset + count} lies past the end of the file (truncated)"
    return None


_CONTAINER_CHECKS = {
    ".tif": _tiff_problem,
    ".tiff": _tiff_problem,
    ".png": _png_problem,
    ".jpg": _jpeg_problem,
    ".jpeg": _jpeg_problem,
    ".webp": _riff_problem,
    ".bmp": _bmp_problem,
}


_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def declared_size(data: bytes, suffix: str) -> tuple[int, int] | None:
    """(height, width) as a structurally valid file's header declares them, read without decoding;
    None where the header does not say (e.g. BigTIFF)."""
    suffix = suffix.lower()
    if suffix == ".png" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if suffix in (".jpg", ".jpeg"):
        pos = 2
        while pos + 9 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in _JPEG_FRAME_MARKERS:  # start of frame: length, precision, height, width
                return struct.unpack(">HH", data[pos + 5:pos + 9])
            if marker == 0xDA:
                return None
            (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
            pos += 2 + length
        return None
    if suffix == ".bmp" and len(data) >= 26:
        (header_size,) = struct.unpack("<I", data[14:18])
        if header_size == 12:  # OS/2 core header: 16-bit sides
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])  # negative height: rows stored top-down
        return abs(height), abs(width)
    if suffix == ".webp" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":  # lossy: 14-bit sides after the frame tag and start code
            width, height = struct.unpack("<HH", data[26:30])
            return height & 0x3FFF, width & 0x3FFF
        if chunk == b"VP8L":  # lossless: 14-bit (side - 1) fields after the signature byte
            (bits,) = struct.unpack("<I", data[21:25])
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if chunk == b"VP8X":  # extended: 24-bit (side - 1) canvas fields
            return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
        return None
    if suffix in (".tif", ".tiff"):
        fields = _tiff_fields(data, (_TIFF_WIDTH, _TIFF_LENGTH))
        if isinstance(fields, dict) and _TIFF_WIDTH in fields and _TIFF_LENGTH in fields:
            return fields[_TIFF_LENGTH][0], fields[_TIFF_WIDTH][0]
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation tag (1-8) of an encoded image, 1 when it has none (read with Pillow)."""
    if b"exif" not in data[:1 << 17].lower() and data[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1  # no EXIF block (JPEG APP1 "Exif", PNG "eXIf", WebP "EXIF") and not a TIFF
    import io

    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as img:
            value = img.getexif().get(0x0112, 1)
    except Exception:  # an unreadable EXIF block leaves the pixels as decoded
        return 1
    return value if value in range(1, 9) else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright for EXIF orientation 1-8 (2/4 mirror, 3 rotate 180, 5/7 transpose/transverse,
    6 rotate 90 clockwise, 8 rotate 90 counter-clockwise)."""
    turned = {1: pixels, 2: pixels[:, ::-1], 3: pixels[::-1, ::-1], 4: pixels[::-1],
              5: pixels.swapaxes(0, 1), 6: np.rot90(pixels, -1), 7: np.rot90(pixels, 2).swapaxes(0, 1),
              8: np.rot90(pixels, 1)}[orientation]
    return np.ascontiguousarray(turned)


def read_image(path: str | os.PathLike, min_size: int = 1, max_pixels: int | None = None,
               max_pixels_reason: str = "") -> Image:
    """Read an 8/16-bit gray, RGB or RGBA image file.

    Args:
        path: a file with one of ``IMAGE_EXTENSIONS`` (the content must match the extension).
        min_size: smallest accepted height and width in pixels.
        max_pixels: largest accepted height x width, checked from the header before decoding (an image
            too large for memory fails here instead of in the decoder or later); ``max_pixels_reason``
            says why, in the error.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: empty, not an image, truncated/corrupted, unsupported channel count or
            sample type, or smaller than ``min_size``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ImageReadError(f"{path}: unsupported extension {path.suffix!r}; expected one of {IMAGE_EXTENSIONS}")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise ImageReadError(f"{path}: file is empty (0 bytes); expected a {suffix} image")
    problem = _CONTAINER_CHECKS[suffix](data)
    if problem:
        raise ImageReadError(f"{path}: not a valid {suffix} image: {problem}")
    size = declared_size(data, suffix)
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise ImageReadError(f"{path}: image is {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.1f} Mpixel); "
                             f"at most {max_pixels / 1e6:.1f} Mpixel can be processed{max_pixels_reason}")

    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageReadError(f"{path}: OpenCV could not decode it; expected a {suffix} image")
    # IMREAD_UNCHANGED ignores the EXIF orientation a phone writes: apply it here, so pixels are upright
    # (outputs are written without EXIF, so the tag is dropped together with the rotation it described).
    decoded = _apply_orientation(decoded, exif_orientation(data))
    if decoded.dtype == np.uint8:
        bit_depth, max_value = 8, 255.0
    elif decoded.dtype == np.uint16:
        bit_depth, max_value = 16, 65535.0
    else:
        raise ImageReadError(f"{path}: samples are {decoded.dtype}; expected 8- or 16-bit integers")

    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[..., 0]
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if channels not in (1, 3, 4):
        raise ImageReadError(f"{path}: {channels} channels; expected 1 (gray), 3 (colour) or 4 (colour + alpha)")
    height, width = decoded.shape[:2]
    if min(height, width) < min_size:
        raise ImageReadError(f"{path}: image is {height}x{width}; expected at least {min_size}x{min_size} pixels")

    scaled = decoded.astype(np.float32) / np.float32(max_value)
    alpha = None
    if channels == 1:
        rgb = np.repeat(scaled[..., None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(scaled[..., 2::-1])  # OpenCV stores BGR(A)
        if channels == 4:
            alpha = np.ascontiguousarray(scaled[..., 3])
    return Image(rgb=rgb, alpha=alpha, bit_depth=bit_depth, is_gray=channels == 1, path=path)


def _quantise(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """Round [0, 1] floats to integer samples, a band of rows at a time: a large image's float64
    temporaries would otherwise be several times the size of the image itself."""
    max_value = 255 if bit_depth == 8 else 65535
    out = np.empty(values.shape, dtype=np.uint8 if bit_depth == 8 else np.uint16)
    rows = max(1, (1 << 22) // max(1, values[0].size))  # about 4 M samples (32 MB of float64) per band
    for start in range(0, values.shape[0], rows):
        band = np.clip(values[start:start + rows].astype(np.float64), 0.0, 1.0)
        out[start:start + rows] = np.round(band * max_value)
    return out


def write_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, bit_depth: int = 8,
                is_gray: bool = False, overwrite: bool = False, quality: int = 95) -> Path:
    """Write an RGB float image in [0, 1] atomically (temporary file in the same folder, then rename).

    Args:
        path: destination; its extension picks the format. Parent folders are created.
        rgb: H x W x 3 RGB (or H x W gray) float array, values clipped to [0, 1].
        alpha: optional H x W float alpha in [0, 1].
        bit_depth: 8, or 16 for PNG/TIFF.
        is_gray: store a single channel (BT.601 luma of ``rgb``), as for gray sources.
        overwrite: replace an existing file instead of raising FileExistsError.
        quality: JPEG/WebP quality (1-100).

    Returns:
        The written path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; expected one of {IMAGE_EXTENSIONS}")
    if bit_depth not in (8, 16):
        raise ValueError(f"{path}: bit_depth must be 8 or 16, got {bit_depth!r}")
    if bit_depth == 16 and suffix in _EIGHT_BIT_ONLY:
        raise ValueError(f"{path}: {suffix} cannot store 16-bit samples; use .png or .tif")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")

    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: rgb must be H x W x 3 (or H x W), got shape {rgb.shape}")
    if not np.issubdtype(rgb.dtype, np.floating):
        raise TypeError(f"{path}: rgb must be float in [0, 1], got dtype {rgb.dtype}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"{path}: alpha shape {alpha.shape} does not match image {rgb.shape[:2]}")
        if is_gray:
            raise ValueError(f"{path}: OpenCV cannot write gray + alpha; pass is_gray=False to store RGBA")
        if suffix in (".jpg", ".jpeg"):
            raise ValueError(f"{path}: JPEG has no alpha channel; use .png, .tif or .webp")

    if is_gray:
        planes = cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2GRAY)
    elif alpha is not None:
        planes = np.concatenate([rgb[..., ::-1], alpha[..., None]], axis=2)
    else:
        planes = rgb[..., ::-1]
    params = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, encoded = cv2.imencode(suffix, _quantise(planes, bit_depth), params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a {bit_depth}-bit {suffix} image")

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; give the usual permissions of a written image
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(encoded.tobytes())
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
