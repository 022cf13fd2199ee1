"""Video outputs: MP4 (PyAV, H.264), GIF (PIL) and a PNG grid of frames, each written atomically.

Frames come in as a video tensor [T, C, H, W] in [-1, 1] (MovingDigits' layout) or uint8 [T, H, W, 3]; one
channel is repeated to RGB. H.264 with yuv420p needs even sizes: an odd height or width is padded by one black
(edge-replicated) row/column at the bottom/right, so the MP4 may be one pixel larger than the frames (GIF and
PNG keep the exact size). MP4 frames are streamed to the encoder (`Mp4Writer`, chunk by chunk as a sampler decodes
them) into a temporary file that is renamed onto the target once complete.
"""
from __future__ import annotations

import contextlib
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from mtp.files import atomic_path


def to_uint8_frames(video) -> np.ndarray:
    """[T, C, H, W] float in [-1, 1] (C = 1 or 3) or uint8 [T, H, W, 3] -> uint8 [T, H, W, 3]."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be [T, H, W, 3], got {video.shape}")
        return video
    v = torch.as_tensor(video).detach().float().cpu()
    if v.ndim != 4 or v.shape[1] not in (1, 3):
        raise ValueError(f"a video must be [T, C, H, W] with C = 1 or 3, got {tuple(v.shape)}")
    if v.shape[0] < 1:
        raise ValueError("a video needs at least one frame")
    v = v.expand(-1, 3, -1, -1) if v.shape[1] == 1 else v
    frames = ((v.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


class Mp4Writer:
    """H.264 MP4 (yuv420p, constant frame rate `fps`) written incrementally: `write` takes chunks of frames as they
    are made (only one chunk in memory), into a temporary file renamed onto `path` when the `with` block ends
    without an error (an error leaves nothing behind). See the module docstring for odd sizes."""

    def __init__(self, path, fps: float = 8.0, overwrite: bool = False, crf: int = 18):
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.path, self.fps, self.overwrite, self.crf = Path(path), fps, overwrite, crf
        self.frames = 0
        self._stack = self._container = self._stream = None

    def __enter__(self) -> "Mp4Writer":
        import av

        self._stack = contextlib.ExitStack()
        with self._stack:  # a failure to open unwinds (no temporary left)
            tmp = self._stack.enter_context(atomic_path(self.path, overwrite=self.overwrite))
            self._container = self._stack.enter_context(av.open(str(tmp), mode="w", format="mp4"))
            self._stack = self._stack.pop_all()
        return self

    def write(self, video) -> None:
        """Append frames: [n, C, H, W] in [-1, 1] or uint8 [n, H, W, 3] (to_uint8_frames), all of one size."""
        import av

        if self._container is None:
            raise RuntimeError("Mp4Writer.write outside its `with` block")
        frames = to_uint8_frames(video)
        h, w = _even(frames[0]).shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
            self._stream.options = {"crf": str(self.crf)}
        elif (h, w) != (self._stream.height, self._stream.width):
            raise ValueError(f"{self.path}: frames of {h}x{w} after frames of {self._stream.height}x"
                             f"{self._stream.width}; a video has one frame size")
        for frame in frames:
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(_even(frame), format="rgb24")):
                self._container.mux(packet)
        self.frames += len(frames)

    def __exit__(self, exc_type, exc, tb):
        stack, self._stack, container, self._container = self._stack, None, self._container, None
        if exc_type is not None:
            return stack.__exit__(exc_type, exc, tb)
        with stack:  # an error here still unwinds: no partial file is renamed into place
            if self._stream is None:
                raise ValueError(f"{self.path}: no frames were written")
            for packet in self._stream.encode():
                container.mux(packet)
        return False


def write_mp4(video, path, fps: float = 8.0, overwrite: bool = False, crf: int = 18) -> Path:
    """A whole video as H.264 MP4 (Mp4Writer in one chunk)."""
    frames = to_uint8_frames(video)
    with Mp4Writer(path, fps=fps, overwrite=overwrite, crf=crf) as writer:
        writer.write(frames)
    return Path(path)


def write_gif(video, path, fps: float = 8.0, overwrite: bool = False, scale: int = 1) -> Path:
    """Looping GIF at `fps` (GIF delays are in 1/100 s, so the rate is rounded to that); `scale` enlarges frames
    by pixel repetition (tiny digits are easier to see)."""
    from PIL import Image

    frames = to_uint8_frames(video)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]
    with atomic_path(path, overwrite=overwrite) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=max(20, int(round(1000 / fps / 10)) * 10))
    return Path(path)


def frame_grid(video, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """All frames tiled row by row (columns: default ceil(sqrt(T)) capped at 16) with `pad` grey pixels between."""
    frames = to_uint8_frames(video)
    t, h, w, _ = frames.shape
    columns = columns or min(16, math.ceil(math.sqrt(t)))
    rows = math.ceil(t / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 128, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = frame
    return grid


def write_png_grid(video, path, columns: int | None = None, overwrite: bool = False, scale: int = 1) -> Path:
    from PIL import Image

    grid = frame_grid(video, columns)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return Path(path)


def write_tensor(tensor, path, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(torch.as_tensor(tensor).detach().cpu(), tmp)
    return Path(path)
