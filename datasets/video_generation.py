"""Video generation data: seeded moving handwritten digits and clips read from real video files.

Conventions (every source here):
- a video is float32 ``[T, C, H, W]`` in [-1, 1] (frame-major, channels first; 0 -> -1, full scale -> 1).
- ``MovingDigits`` items are ``{"video": [T, 1, H, W], "label": int, "labels": LongTensor [num_digits],
  "id": str}``; torch's default collate batches them (video [B, T, 1, H, W], label [B], ids a list).

MovingDigits, after the Moving-MNIST generator of Srivastava et al. (2015), on real handwriting:
- source: scikit-learn's bundled digits (``sklearn.datasets.load_digits``: 1797 scanned 8x8 handwritten digits,
  grey levels 0..16), scaled to [0, 1] by /16 and upscaled to ``digit_size`` x ``digit_size`` with bilinear
  interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``; "nearest" on request).
- split (fixed, independent of ``seed``): per class, the class's image indices are permuted by
  ``numpy.random.default_rng((SPLIT_SEED, class))`` and the first ``round(TEST_FRACTION * n_class)`` of them
  (20%) are the test images, the rest train; so test clips show handwriting never seen in training
  (``source_indices(split)``; 1438 train / 359 test images).
- motion: each digit starts at a uniform position inside the canvas (top-left corner in
  [0, canvas - digit_size] per axis), with a uniform direction and a speed uniform in ``speed`` pixels per frame,
  constant; after each frame the position moves by the velocity and, past a wall, is clamped to it and that
  velocity component flips (the bounce of the original generator). Positions are rounded to whole pixels
  when drawn; two digits are combined by the pixel-wise maximum, as in the original.
- seeding: item i is a pure function of (seed, split, epoch, i): ``numpy.random.default_rng((seed, split code,
  epoch, i))`` draws the source image(s), then per digit the start, direction and speed. The epoch stays 0 unless
  ``redraw_each_epoch`` (train only; the test set never changes), then ``set_epoch`` redraws the training clips.
- label: the class of the (first) digit; ``labels`` lists the class of every digit. ``id`` is
  ``"{split}-e{epoch}-{i:06d}-d{source index}[+{source index}]"``.

Real video (``video_clips``): decoded with PyAV (every frame, in presentation order, as RGB 8-bit), resized with
OpenCV (area interpolation when shrinking, bilinear when enlarging), cut into clips of ``num_frames`` frames.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPLITS = ("train", "test")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
INTERPOLATIONS = ("bilinear", "nearest")
NUM_CLASSES = 10


class VideoFileError(ValueError):
    """A video file that cannot be used; the message names the file and what is wrong with it."""


# ------------------------------------------------------------------------------------------ digits source
@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [1797, 8, 8] in [0, 1], labels int64 [1797]) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn arrives with the tsc extra (aeon)
        raise ImportError("MovingDigits needs scikit-learn (pip install scikit-learn) for its bundled digits") from err
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    return images, np.asarray(bunch.target, dtype=np.int64)


@functools.lru_cache(maxsize=2)
def _split_indices() -> dict[str, np.ndarray]:
    _, labels = _digits()
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        members = members[np.random.default_rng((SPLIT_SEED, c)).permutation(len(members))]
        n_test = int(round(TEST_FRACTION * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def source_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits()`` of the images of ``split`` (sorted; see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _split_indices()[split].copy()


def digit_sprites(indices, digit_size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """The source images ``indices`` upscaled to [N, digit_size, digit_size] float32 in [0, 1]."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    images, _ = _digits()
    small = torch.from_numpy(images[np.asarray(indices, dtype=np.int64)])[:, None]
    if digit_size == small.shape[-1]:
        return small[:, 0].clone()
    kwargs = {"align_corners": False} if interpolation == "bilinear" else {}
    big = F.interpolate(small, size=(digit_size, digit_size), mode=interpolation, **kwargs)
    return big[:, 0].clamp_(0.0, 1.0)


def bounce_trajectory(start: np.ndarray, velocity: np.ndarray, num_frames: int, limit: float) -> np.ndarray:
    """Positions [num_frames, 2] from ``start`` (2,) moving at ``velocity`` (2,) per frame inside [0, limit]: past a
    wall the position is clamped to it and that velocity component flips."""
    position, velocity = np.array(start, dtype=np.float64), np.array(velocity, dtype=np.float64)
    out = np.empty((num_frames, 2))
    for t in range(num_frames):
        out[t] = position
        position = position + velocity
        for axis in range(2):
            if position[axis] < 0.0:
                position[axis], velocity[axis] = 0.0, -velocity[axis]
            elif position[axis] > limit:
                position[axis], velocity[axis] = limit, -velocity[axis]
    return out


class MovingDigits(Dataset):
    """``num_items`` clips of ``num_digits`` real handwritten digits bouncing around a black ``canvas`` x
    ``canvas`` frame for ``num_frames`` frames (see the module docstring for the source, split, motion and
    seeding)."""

    def __init__(self, split: str = "train", num_items: int = 1000, num_frames: int = 16, canvas: int = 32,
                 digit_size: int = 16, num_digits: int = 1, speed: tuple[float, float] = (1.0, 3.0), seed: int = 0,
                 redraw_each_epoch: bool = False, interpolation: str = "bilinear"):
        if split not in SPLITS:
            raise ValueError(f"MovingDigits: split must be one of {SPLITS}, got {split!r}")
        for name, value, low in (("num_items", num_items, 1), ("num_frames", num_frames, 1),
                                 ("digit_size", digit_size, 8), ("canvas", canvas, 8)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"MovingDigits: {name} must be an int >= {low}, got {value!r}")
        if digit_size > canvas:
            raise ValueError(f"MovingDigits: digit_size ({digit_size}) must be <= canvas ({canvas})")
        if num_digits not in (1, 2):
            raise ValueError(f"MovingDigits: num_digits must be 1 or 2, got {num_digits!r}")
        if len(speed) != 2 or not 0.0 <= speed[0] <= speed[1]:
            raise ValueError(f"MovingDigits: speed must be (low, high) pixels per frame with 0 <= low <= high, "
                             f"got {speed!r}")
        if redraw_each_epoch and split != "train":
            raise ValueError(f"MovingDigits: redraw_each_epoch is for the train split only (the {split} set is "
                             f"fixed), got split={split!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"MovingDigits: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.split, self.num_items, self.num_frames = split, int(num_items), int(num_frames)
        self.canvas, self.digit_size, self.num_digits = int(canvas), int(digit_size), int(num_digits)
        self.speed, self.seed, self.interpolation = (float(speed[0]), float(speed[1])), int(seed), interpolation
        self.redraw_each_epoch, self.epoch = bool(redraw_each_epoch), 0
        self.sources = source_indices(split)
        self.sprites = digit_sprites(self.sources, self.digit_size, interpolation)   # [N, s, s] in [0, 1]
        self.classes = _digits()[1][self.sources]

    def set_epoch(self, epoch: int) -> None:
        """Redraw the training clips for ``epoch`` (only with ``redraw_each_epoch``; otherwise a no-op)."""
        if self.redraw_each_epoch:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def draw(self, index: int) -> tuple[list[int], np.ndarray]:
        """(positions into ``self.sources`` per digit, top-left corners [num_digits, T, 2] as (row, col) floats) of
        item ``index``: a pure function of (seed, split, epoch, index)."""
        rng = np.random.default_rng((self.seed, SPLITS.index(self.split), self.epoch, int(index)))
        picks = [int(p) for p in rng.choice(len(self.sources), size=self.num_digits, replace=False)]
        limit = float(self.canvas - self.digit_size)
        paths = []
        for _ in range(self.num_digits):
            start = rng.uniform(0.0, limit, size=2)
            theta = rng.uniform(0.0, 2.0 * np.pi)
            speed = rng.uniform(*self.speed)
            paths.append(bounce_trajectory(start, speed * np.array([np.sin(theta), np.cos(theta)]),
                                           self.num_frames, limit))
        return picks, np.stack(paths)

    def render(self, picks: list[int], paths: np.ndarray) -> torch.Tensor:
        """The clip [T, 1, canvas, canvas] in [-1, 1] of ``draw``'s values."""
        s = self.digit_size
        frames = torch.zeros(self.num_frames, self.canvas, self.canvas)
        corners = np.rint(paths).astype(np.int64)
        for k, pick in enumerate(picks):
            sprite = self.sprites[pick]
            for t in range(self.num_frames):
                r, c = corners[k, t]
                patch = frames[t, r:r + s, c:c + s]
                torch.maximum(patch, sprite, out=patch)
        return (frames * 2.0 - 1.0)[:, None].contiguous()

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_items:
            raise IndexError(f"MovingDigits: index {index} out of range for {self.num_items} clips")
        picks, paths = self.draw(index)
        sources = "+".join(str(int(self.sources[p])) for p in picks)
        labels = torch.tensor([int(self.classes[p]) for p in picks], dtype=torch.long)
        return {"video": self.render(picks, paths), "label": int(labels[0]), "labels": labels,
                "id": f"{self.split}-e{self.epoch}-{index:06d}-d{sources}"}


# ------------------------------------------------------------------------------------------- real video
def _target_size(height: int, width: int, size) -> tuple[int, int, int, int]:
    """(resized h, w, crop h, w): cover the crop keeping the aspect ratio, then centre-crop."""
    if size is None:
        return height, width, height, width
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        crop_h = crop_w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size):
        crop_h, crop_w = int(size[0]), int(size[1])
    else:
        raise ValueError(f"video_clips: size must be None, an int or (height, width), got {size!r}")
    if crop_h < 1 or crop_w < 1:
        raise ValueError(f"video_clips: size must be positive, got {size!r}")
    scale = max(crop_h / height, crop_w / width)
    return (max(crop_h, int(round(height * scale))), max(crop_w, int(round(width * scale))), crop_h, crop_w)


def _resize(frame: np.ndarray, dims: tuple[int, int, int, int]) -> np.ndarray:
    import cv2

    new_h, new_w, crop_h, crop_w = dims
    if (new_h, new_w) != frame.shape[:2]:
        shrink = new_h * new_w < frame.shape[0] * frame.shape[1]
        frame = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return frame[top:top + crop_h, left:left + crop_w]


def read_video_frames(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Frames of ``path``'s first video stream as uint8 [T, H, W, 3] RGB (at most ``max_frames``) and its frame
    rate. Missing, unreadable or frameless files raise ``VideoFileError`` naming the file."""
    import av

    path = Path(path)
    if not path.exists():
        raise VideoFileError(f"{path}: no such file")
    if not path.is_file():
        raise VideoFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise VideoFileError(f"{path}: empty file (0 bytes)")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else float("nan")
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoFileError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as err:   # InvalidDataError and friends
        raise VideoFileError(f"{path}: not a readable video file ({err})") from err
    if not frames:
        raise VideoFileError(f"{path}: no decodable video frames")
    return np.stack(frames), rate


def video_clips(path: str | Path, num_frames: int = 16, size: int | tuple[int, int] | None = None,
                stride: int | None = None, frame_step: int = 1, max_clips: int | None = None) -> torch.Tensor:
    """Clips of a real video file as float32 [N, T, 3, H, W] in [-1, 1] (``clips[i]`` is one [T, C, H, W] clip).

    Clip i holds frames ``i * stride + j * frame_step`` for j < ``num_frames`` (``stride`` defaults to
    ``num_frames * frame_step``: back-to-back clips); a tail too short for a clip is dropped, at most
    ``max_clips`` clips are read. ``size``: None keeps the frames as they are; an int gives square ``size`` x
    ``size`` frames and (h, w) gives h x w, both by scaling (keeping the aspect ratio, area interpolation when
    shrinking, bilinear when enlarging) to cover the target and cropping its centre. A file with fewer frames
    than one clip needs raises ``VideoFileError`` naming it, as do missing and unreadable files.
    """
    for name, value in (("num_frames", num_frames), ("frame_step", frame_step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"video_clips: {name} must be an int >= 1, got {value!r}")
    span = (num_frames - 1) * frame_step + 1
    stride = num_frames * frame_step if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"video_clips: stride must be an int >= 1, got {stride!r}")
    if max_clips is not None and (isinstance(max_clips, bool) or not isinstance(max_clips, (int, np.integer))
                                  or max_clips < 1):
        raise ValueError(f"video_clips: max_clips must be None or an int >= 1, got {max_clips!r}")
    _target_size(1, 1, size)   # a bad size is refused before any decoding
    needed = None if max_clips is None else (max_clips - 1) * stride + span
    frames, _ = read_video_frames(path, needed)
    if len(frames) < span:
        raise VideoFileError(f"{path}: {len(frames)} frames, fewer than one clip needs ({num_frames} frames "
                             f"{frame_step} apart = {span})")
    starts = list(range(0, len(frames) - span + 1, stride))[:max_clips]
    dims = _target_size(frames.shape[1], frames.shape[2], size)
    used = sorted({s + j * frame_step for s in starts for j in range(num_frames)})
    resized = {t: _resize(frames[t], dims) for t in used}
    clips = np.stack([np.stack([resized[s + j * frame_step] for j in range(num_frames)]) for s in starts])
    video = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 1, 4, 2, 3).float()
    return video.div_(127.5).sub_(1.0)
