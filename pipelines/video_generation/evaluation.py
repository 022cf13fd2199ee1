"""Target evaluation of generated video, weight-free: a digit classifier trained here on REAL frames (MovingDigits
train clips) scores the class of every generated frame, gives the features of the FVD-style Fréchet distance and
of the feature drift; the temporal metrics of ``metrics`` are reported for the generated and the real clips side
by side, so "warping error / real" is a ratio of figures measured the same way.

Clip features of the Fréchet distance (``clip_features``, mode "mean_delta", the default): per clip the mean over
frames of the classifier's penultimate features f_t (D values: what is shown) concatenated with the mean over
t of |f_{t+1} - f_t| (D values: how it changes between frames). The mean alone ("mean") cannot see the order of
the frames, so a shuffled clip would score as the real one; "concat" (all T x D values, frame order kept) needs
far more clips than dimensions to give a stable covariance, so it is offered, not the default.

Reading the figures (default classifier, 16-frame clips): the Fréchet distance has a sampling floor. Two disjoint
real sets score about 40-80 at 64 clips each and about 20 at 128 (64 feature dims), while frame-shuffling the same
64 clips adds about 14; compare settings on the same real reference and clip count. Real MovingDigits clips move by
whole pixels over a black background, so their warping error is nearly 0 (about 2e-4): "warping error <= 3x real" asks
for nearly exact motion. The classifier is blind to frame order by design (class figures do not change under
shuffling); drift and SSIM to the first frame measure content change from the start, not disorder (shuffling lowers
them), so they are checked against clips whose content changes.

I3D-FVD and CLIP frame consistency need weights nobody can download here: ``i3d_frechet_distance`` takes the path
of the TorchScript I3D detector used by StyleGAN-V/DIGAN-style FVD code (``i3d_torchscript.pt``) and
``clip_frame_consistency`` a local CLIP folder in Hugging Face format; both raise ``FileNotFoundError`` naming the
missing file otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtp.files import atomic_path
from mtp.pipelines.video_generation import metrics as M

CLASSIFIER_FORMAT = "mtp.video_generation.frame_classifier"
CLASSIFIER_VERSION = 1
CLIP_FEATURE_MODES = ("mean_delta", "mean", "concat")
MIN_REAL_CLIPS = 64
RANGE_TOLERANCE = M.RANGE_TOLERANCE


# ------------------------------------------------------------------------------------------------ the classifier
class FrameClassifier(nn.Module):
    """A small CNN over single frames [N, C, S, S] in [-1, 1]: three conv-BN-ReLU-maxpool stages (S -> S/8),
    then a fully connected layer on the flattened map (so the features keep where the digit is, which the
    Fréchet distance and the drift need), the penultimate ``feature_dim`` features, and the class logits."""

    def __init__(self, num_classes: int = 10, channels: int = 1, image_size: int = 32, width: int = 16,
                 feature_dim: int = 32):
        super().__init__()
        if image_size % 8 or image_size < 8:
            raise ValueError(f"FrameClassifier: image_size must be a multiple of 8, got {image_size}")
        self.settings = dict(num_classes=int(num_classes), channels=int(channels), image_size=int(image_size),
                             width=int(width), feature_dim=int(feature_dim))
        self.info: dict = {}   # training settings and test figures, saved with the weights
        layers, c_in = [], channels
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c_in * (image_size // 8) ** 2, feature_dim),
                                   nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.settings["num_classes"]

    def check_frames(self, frames, name: str = "frames") -> torch.Tensor:
        """``frames`` as float32 [N, C, S, S] on the model's device, or a ValueError saying what was expected."""
        frames = torch.as_tensor(frames)
        c, s = self.settings["channels"], self.settings["image_size"]
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (c, s, s):
            raise ValueError(f"FrameClassifier: {name} must be [N, {c}, {s}, {s}] frames, got shape "
                             f"{tuple(frames.shape)}")
        _check_range(frames, name)
        return frames.to(self.head.weight.device, torch.float32)

    def _embed(self, frames: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(frames))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Class logits [N, K] (no input checks: the training path)."""
        return self.head(self._embed(frames))

    @torch.no_grad()
    def _batched(self, frames, fn, batch_size: int) -> torch.Tensor:
        frames = self.check_frames(frames)
        was_training = self.training
        self.eval()
        try:
            outs = [fn(frames[i:i + batch_size]) for i in range(0, frames.shape[0], batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(outs) if outs else frames.new_zeros(0)

    def logits(self, frames, batch_size: int = 1024) -> torch.Tensor:
        """Class logits [N, K] of frames [N, C, S, S] in [-1, 1] (eval mode, no gradient)."""
        return self._batched(frames, self.forward, batch_size)

    def predict(self, frames, batch_size: int = 1024) -> torch.Tensor:
        """Predicted class ids, LongTensor [N]."""
        return self.logits(frames, batch_size).argmax(-1)

    def features(self, frames, batch_size: int = 1024) -> torch.Tensor:
        """Penultimate features [N, feature_dim] (after the ReLU), the features of the Fréchet distance."""
        return self._batched(frames, self._embed, batch_size)

    def save(self, path, overwrite: bool = False) -> Path:
        """Weights, settings and ``info`` in one .pt, written atomically; an existing file needs ``overwrite``."""
        payload = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "settings": dict(self.settings),
                   "info": dict(self.info), "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load(cls, path, map_location="cpu") -> "FrameClassifier":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no frame classifier there (train one with train_frame_classifier("
                                    f"path=...))")
        payload = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
            raise ValueError(f"{path}: not a frame classifier file (expected key 'format' = {CLASSIFIER_FORMAT!r})")
        if payload.get("version") != CLASSIFIER_VERSION:
            raise ValueError(f"{path}: frame classifier version {payload.get('version')!r}, this code reads "
                             f"{CLASSIFIER_VERSION}")
        for key in ("settings", "state_dict"):
            if key not in payload:
                raise ValueError(f"{path}: frame classifier file lacks the key {key!r}")
        model = cls(**payload["settings"])
        model.load_state_dict(payload["state_dict"], strict=True)
        model.info = dict(payload.get("info", {}))
        return model.eval()


def load_frame_classifier(path, map_location="cpu") -> FrameClassifier:
    """A classifier saved by ``FrameClassifier.save`` / ``train_frame_classifier(path=...)``."""
    return FrameClassifier.load(path, map_location)


def _digit_frames(split: str, num_clips: int, num_frames: int, seed: int, canvas: int, digit_size: int):
    """(frames [num_clips * num_frames, 1, canvas, canvas], labels) of MovingDigits clips, label = the clip's."""
    from mtp.datasets.video_generation import MovingDigits

    data = MovingDigits(split, num_items=num_clips, num_frames=num_frames, canvas=canvas, digit_size=digit_size,
                        seed=seed)
    items = [data[i] for i in range(len(data))]
    frames = torch.cat([item["video"] for item in items])
    labels = torch.tensor([item["label"] for item in items]).repeat_interleave(num_frames)
    return frames, labels


def augment_frames(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Photometric jitter of real frames [N, 1, S, S] in [-1, 1], so the classifier reads generated frames, whose
    background is never exactly black nor noise-free: per frame, with probability 1/2 a 3x3 Gaussian blur (sigma
    0.8), then contrast a ~ U(0.5, 1) and offset b ~ U(0, 0.6) (x -> a x + b - (1 - a): the background moves from -1
    up to -0.4), then Gaussian noise of std ~ U(0, 0.15); clamped to [-1, 1]. Geometry is left alone."""
    n = frames.shape[0]

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)

    taps = torch.exp(-torch.arange(-1.0, 2.0) ** 2 / (2 * 0.8 ** 2))
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).view(1, 1, 3, 3)
    blurred = F.conv2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), kernel)
    blur = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    x = torch.where(blur, blurred, frames)
    a, b = uniform(0.5, 1.0), uniform(0.0, 0.6)
    x = a * x + b - (1.0 - a)
    x = x + uniform(0.0, 0.15) * torch.randn(x.shape, generator=generator)
    return x.clamp_(-1.0, 1.0)


def train_frame_classifier(*, num_clips: int = 4000, num_frames: int = 8, test_clips: int = 400, epochs: int = 4,
                           steps: int | None = None, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                           canvas: int = 32, digit_size: int = 16, width: int = 16, feature_dim: int = 32,
                           augment: bool = True, path=None, overwrite: bool = False, log=None) -> FrameClassifier:
    """Train a ``FrameClassifier`` on the frames of ``num_clips`` MovingDigits train clips (single digit, label = the
    clip's digit; ``augment_frames`` jitter unless ``augment=False``) and measure its frame accuracy on
    ``test_clips`` test clips (handwriting never seen in training), clean (``info["test_frame_accuracy"]``) and
    jittered (``info["test_frame_accuracy_jittered"]``). Seeded (initialisation, order, jitter); the global RNG is
    left as it was. ``steps`` caps the optimiser steps (for fast tests). Saved to ``path`` when given."""
    import time

    started = time.perf_counter()
    frames, labels = _digit_frames("train", num_clips, num_frames, seed, canvas, digit_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FrameClassifier(channels=1, image_size=canvas, width=width, feature_dim=feature_dim)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    total = epochs * math.ceil(len(frames) / batch_size) if steps is None else int(steps)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(total, 1), pct_start=0.15)
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    while step < total:
        for idx in torch.randperm(len(frames), generator=order_rng).split(batch_size):
            if step >= total:
                break
            batch = augment_frames(frames[idx], order_rng) if augment else frames[idx]
            loss = F.cross_entropy(model(batch), labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if log is not None and step % 100 == 0:
                log(f"step {step}/{total} loss {loss.item():.4f}")
    model.eval()
    test_frames, test_labels = _digit_frames("test", test_clips, num_frames, seed, canvas, digit_size)
    accuracy = float((model.predict(test_frames) == test_labels).float().mean())
    jittered = augment_frames(test_frames, torch.Generator().manual_seed(seed + 1))
    accuracy_jittered = float((model.predict(jittered) == test_labels).float().mean())
    model.info = dict(train_clips=num_clips, frames_per_clip=num_frames, test_clips=test_clips, steps=step,
                      batch_size=batch_size, lr=lr, seed=seed, canvas=canvas, digit_size=digit_size, augment=augment,
                      test_frame_accuracy=accuracy, test_frame_accuracy_jittered=accuracy_jittered,
                      train_seconds=round(time.perf_counter() - started, 1))
    if path is not None:
        model.save(path, overwrite=overwrite)
    return model


def default_classifier_path(seed: int = 0) -> Path:
    """Where ``frame_classifier`` keeps the default classifier: $MTP_CACHE_DIR (or ~/.cache/mtp)/weights/..."""
    from mtp.files import cache_dir

    return cache_dir("weights") / "video_generation" / f"frame_classifier_moving_digits_v2_s{seed}.pt"


def frame_classifier(path=None, seed: int = 0, log=None, **train_kwargs) -> FrameClassifier:
    """The classifier saved at ``path`` (default ``default_classifier_path(seed)``); trained with the defaults of
    ``train_frame_classifier`` (about 40 s on one thread) and saved there when the file does not exist yet."""
    path = Path(path) if path is not None else default_classifier_path(seed)
    if path.is_file():
        return load_frame_classifier(path)
    return train_frame_classifier(seed=seed, path=path, log=log, **train_kwargs)


def real_reference_clips(num_clips: int = MIN_REAL_CLIPS, num_frames: int = 16, split: str = "test", seed: int = 0,
                         canvas: int = 32, digit_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(videos [N, T, 1, canvas, canvas], labels [N]) of real MovingDigits clips, the reference of ``score_videos``
    (the test split by default: handwriting the model never saw)."""
    from mtp.datasets.video_generation import MovingDigits

    data = MovingDigits(split, num_items=num_clips, num_frames=num_frames, canvas=canvas, digit_size=digit_size,
                        seed=seed)
    items = [data[i] for i in range(len(data))]
    return torch.stack([it["video"] for it in items]), torch.tensor([it["label"] for it in items])


# ---------------------------------------------------------------------------------------------------- checks
def _check_range(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected float values in [-1, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: non-finite values")
    low, high = float(x.min()), float(x.max())
    if low < -1.0 - RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(f"{name}: values must lie in [-1, 1], got [{low:.4g}, {high:.4g}] (clamp the samples first)")


def check_videos(videos, name: str, classifier: FrameClassifier | None = None) -> torch.Tensor:
    """``videos`` as float32 [N, T, C, H, W] in [-1, 1] (MovingDigits' batch layout), or a ValueError."""
    if isinstance(videos, np.ndarray):
        videos = torch.from_numpy(videos)
    if not isinstance(videos, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor [N, T, C, H, W], got {type(videos).__name__}")
    if videos.dim() != 5:
        hint = " (one clip? add a batch axis)" if videos.dim() == 4 else ""
        raise ValueError(f"{name}: expected [N, T, C, H, W] videos, got shape {tuple(videos.shape)}{hint}")
    if videos.shape[0] < 1 or videos.shape[1] < 2:
        raise ValueError(f"{name}: needs at least 1 clip of at least 2 frames, got shape {tuple(videos.shape)}")
    if classifier is not None:
        c, s = classifier.settings["channels"], classifier.settings["image_size"]
        if tuple(videos.shape[2:]) != (c, s, s):
            raise ValueError(f"{name}: frames must be [{c}, {s}, {s}] for this classifier, got "
                             f"{tuple(videos.shape[2:])} (shape {tuple(videos.shape)}; [N, T, C, H, W] expected)")
    _check_range(videos, name)
    return videos.detach().cpu().float()


def check_labels(labels, count: int, num_classes: int, name: str = "labels") -> torch.Tensor:
    """LongTensor [count] of class ids in [0, num_classes): an int (every clip) or ``count`` ints."""
    if isinstance(labels, (bool, np.bool_)):
        raise ValueError(f"{name}: expected an int or {count} ints, got {labels!r}")
    tensor = torch.as_tensor(labels)
    if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected integer class ids, got dtype {tensor.dtype}")
    if tensor.dim() == 0:
        tensor = tensor.expand(count)
    if tensor.dim() != 1 or tensor.shape[0] != count:
        raise ValueError(f"{name}: expected an int or {count} ints (one per clip), got shape {tuple(tensor.shape)}")
    bad = tensor[(tensor < 0) | (tensor >= num_classes)]
    if bad.numel():
        raise ValueError(f"{name}: class ids must be in [0, {num_classes}), got {bad.tolist()[:5]}")
    return tensor.long().clone()


# ------------------------------------------------------------------------------------------------- features
def frame_predictions(videos, classifier: FrameClassifier) -> torch.Tensor:
    """Predicted class per frame, LongTensor [N, T]."""
    videos = check_videos(videos, "videos", classifier)
    n, t = videos.shape[:2]
    return classifier.predict(videos.flatten(0, 1)).view(n, t).cpu()


def clip_features(videos, classifier: FrameClassifier, mode: str = "mean_delta") -> torch.Tensor:
    """Clip features [N, D'] for the Fréchet distance (module docstring): "mean_delta" [N, 2D], "mean" [N, D],
    "concat" [N, T*D]."""
    if mode not in CLIP_FEATURE_MODES:
        raise ValueError(f"clip_features: mode must be one of {CLIP_FEATURE_MODES}, got {mode!r}")
    videos = check_videos(videos, "videos", classifier)
    n, t = videos.shape[:2]
    feats = classifier.features(videos.flatten(0, 1)).view(n, t, -1).double().cpu()
    if mode == "mean":
        return feats.mean(1)
    if mode == "concat":
        return feats.flatten(1)
    return torch.cat([feats.mean(1), (feats[:, 1:] - feats[:, :-1]).abs().mean(1)], dim=1)


# --------------------------------------------------------------------------------------------------- scoring
TEMPORAL_KEYS = ("warping_error", "flow_coverage", "temporal_flicker", "ssim_to_first", "ssim_to_previous",
                 "drift_pixels", "drift_features")


def _default_window(num_frames: int) -> int:
    """Drift window: a quarter of the clip, at most 8 frames (4 for 16 frames, 8 from 32 frames on)."""
    return max(1, min(8, num_frames // 4))


def _temporal_figures(videos: torch.Tensor, classifier: FrameClassifier, window: int, error: str) -> dict:
    """Means over clips of the ``metrics`` figures of each clip [T, C, H, W]."""
    sums = dict.fromkeys(TEMPORAL_KEYS, 0.0)
    for clip in videos:
        sums["warping_error"] += M.warping_error(clip, error=error)
        sums["flow_coverage"] += M.flow_coverage(clip)
        sums["temporal_flicker"] += M.temporal_flicker(clip)
        sums["ssim_to_first"] += M.ssim_to_first(clip)
        sums["ssim_to_previous"] += M.ssim_to_previous(clip)
        sums["drift_pixels"] += M.drift(clip, window=window)
        sums["drift_features"] += M.drift(clip, window=window, features=classifier.features)
    return {k: v / len(videos) for k, v in sums.items()}


def _class_figures(preds: torch.Tensor, labels: torch.Tensor | None) -> dict:
    out = {"temporal_consistency": M.class_agreement_over_time(preds.numpy())}
    if labels is not None:
        out["class_agreement"] = M.class_agreement_over_time(preds.numpy(), target=labels.numpy())
    return out


def score_videos(videos, labels, classifier: FrameClassifier, real_videos=None, real_labels=None, *,
                 drift_window: int | None = None, feature_mode: str = "mean_delta", error: str = "absolute",
                 min_real_clips: int = MIN_REAL_CLIPS) -> dict:
    """Target figures of generated ``videos`` [N, T, C, H, W] in [-1, 1] of classes ``labels`` (int or N ints).

    Always: ``class_agreement`` (share of frames predicted as the requested label, mean over clips),
    ``temporal_consistency`` (share of frames predicted as the clip's majority class), ``warping_error`` (mean over
    clips, ``error`` "absolute" or "squared"), ``flow_coverage``, ``temporal_flicker``, ``ssim_to_first``,
    ``ssim_to_previous``, ``drift_pixels`` and ``drift_features`` (first vs last ``drift_window`` frames; default a
    quarter of the clip, at most 8; on pixels and on the classifier's features).
    With ``real_videos`` (at least ``min_real_clips`` clips of the same frame size, any length): the same figures
    as ``real_<name>`` (class figures need ``real_labels``), ``warping_error_ratio`` and ``temporal_flicker_ratio``
    (generated / real) and ``frechet_distance`` between ``clip_features(..., feature_mode)`` of both sets.
    Plus the settings: ``num_clips``, ``num_frames``, ``drift_window``, ``feature_mode``, ``error``.
    """
    videos = check_videos(videos, "videos", classifier)
    n, t = videos.shape[:2]
    labels = check_labels(labels, n, classifier.num_classes)
    window = _default_window(t) if drift_window is None else drift_window
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 1 <= window <= t // 2:
        raise ValueError(f"score_videos: drift_window must be an int in [1, T/2 = {t // 2}] for {t}-frame clips, "
                         f"got {window!r}")
    if feature_mode not in CLIP_FEATURE_MODES:
        raise ValueError(f"score_videos: feature_mode must be one of {CLIP_FEATURE_MODES}, got {feature_mode!r}")
    if error not in M.ERRORS:
        raise ValueError(f"score_videos: error must be one of {M.ERRORS}, got {error!r}")
    result = {"num_clips": n, "num_frames": t, "drift_window": int(window), "feature_mode": feature_mode,
              "error": error}
    result.update(_class_figures(frame_predictions(videos, classifier), labels))
    result.update(_temporal_figures(videos, classifier, int(window), error))
    if real_videos is None:
        if real_labels is not None:
            raise ValueError("score_videos: real_labels given without real_videos")
        return result
    real = check_videos(real_videos, "real_videos", classifier)
    if real.shape[0] < min_real_clips:
        raise ValueError(f"score_videos: real_videos has {real.shape[0]} clips, at least min_real_clips="
                         f"{min_real_clips} are needed for the Fréchet distance (e.g. real_reference_clips(64))")
    if feature_mode == "concat" and real.shape[1] != t:
        raise ValueError(f"score_videos: feature_mode 'concat' needs real clips of the same length ({t} frames), "
                         f"got {real.shape[1]}")
    real_window = min(int(window), real.shape[1] // 2)
    real_lab = None if real_labels is None else check_labels(real_labels, real.shape[0], classifier.num_classes,
                                                             "real_labels")
    real_figures = _class_figures(frame_predictions(real, classifier), real_lab)
    real_figures.update(_temporal_figures(real, classifier, real_window, error))
    result.update({f"real_{k}": v for k, v in real_figures.items()})
    result["real_num_clips"], result["real_num_frames"] = int(real.shape[0]), int(real.shape[1])
    for key in ("warping_error", "temporal_flicker"):
        result[f"{key}_ratio"] = result[key] / result[f"real_{key}"] if result[f"real_{key}"] > 0 else float("nan")
    result["frechet_distance"] = M.frechet_distance(clip_features(videos, classifier, feature_mode),
                                                    clip_features(real, classifier, feature_mode))
    return result


# --------------------------------------------------------------------------- weights the user must bring
I3D_FILENAME = "i3d_torchscript.pt"
I3D_RESOLUTION = 224


def _need_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {what} needs this file ({hint}). Nothing can be downloaded here: "
                                f"copy it there, or use the weight-free score_videos")
    return path


def load_i3d_detector(path):
    """The TorchScript I3D of the common FVD code (``i3d_torchscript.pt``, Kinetics-400; ``path`` is the file or
    the folder holding it), on the CPU in eval mode."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / I3D_FILENAME
    _need_file(path, "I3D-FVD", f"the TorchScript I3D detector {I3D_FILENAME} of StyleGAN-V / DIGAN FVD code")
    return torch.jit.load(str(path), map_location="cpu").eval()


def i3d_inputs(videos) -> torch.Tensor:
    """[N, T, C, H, W] in [-1, 1] -> the detector's [N, 3, T, 224, 224] in [-1, 1]: grey repeated to RGB, the
    shorter side scaled to 224 (bilinear), the centre cropped (as the common FVD preprocessing)."""
    videos = check_videos(videos, "videos")
    if videos.shape[2] not in (1, 3):
        raise ValueError(f"i3d_inputs: frames must have 1 or 3 channels, got {videos.shape[2]}")
    n, t, c, h, w = videos.shape
    frames = videos.flatten(0, 1)
    if c == 1:
        frames = frames.expand(-1, 3, -1, -1)
    scale = I3D_RESOLUTION / min(h, w)
    size = (max(I3D_RESOLUTION, math.ceil(h * scale)), max(I3D_RESOLUTION, math.ceil(w * scale)))
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - I3D_RESOLUTION) // 2, (size[1] - I3D_RESOLUTION) // 2
    frames = frames[..., top:top + I3D_RESOLUTION, left:left + I3D_RESOLUTION]
    return frames.reshape(n, t, 3, I3D_RESOLUTION, I3D_RESOLUTION).transpose(1, 2).contiguous()


@torch.no_grad()
def i3d_features(videos, detector, batch_size: int = 8) -> torch.Tensor:
    """[N, 400] I3D features (logits before the softmax: rescale=False, resize=False, return_features=True)."""
    videos = check_videos(videos, "videos")
    outs = [detector(i3d_inputs(videos[i:i + batch_size]), rescale=False, resize=False, return_features=True)
            for i in range(0, videos.shape[0], batch_size)]
    return torch.cat(outs).double()


def i3d_frechet_distance(videos, real_videos, detector_path, batch_size: int = 8) -> float:
    """FVD: Fréchet distance of I3D features of generated and real clips (the I3D detector file from
    ``detector_path``; a clear FileNotFoundError when it is not there). At least 10 frames per clip is the
    detector's usual minimum; 16 frames is the common protocol."""
    detector = load_i3d_detector(detector_path)
    return M.frechet_distance(i3d_features(videos, detector, batch_size), i3d_features(real_videos, detector,
                                                                                      batch_size))


CLIP_FILES = ("config.json", "preprocessor_config.json")


def load_clip_vision(model_dir):
    """(vision model with projection, image processor) from a local Hugging Face CLIP folder (no download)."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing; CLIP frame consistency needs a local Hugging Face CLIP folder "
                                f"(config.json, preprocessor_config.json, model.safetensors or pytorch_model.bin)")
    for name in CLIP_FILES:
        _need_file(folder / name, "CLIP frame consistency", "a Hugging Face CLIP folder")
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise FileNotFoundError(f"{folder / 'model.safetensors'}: missing (nor pytorch_model.bin); CLIP frame "
                                f"consistency needs the model's weights in {folder}")
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True).eval()
    return model, CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)


@torch.no_grad()
def clip_frame_consistency(videos, model_dir, batch_size: int = 64) -> dict:
    """CLIP consistency: per clip the mean cosine similarity of the CLIP image embeddings of consecutive frames
    (``clip_consistency_previous``) and of each frame to the first (``clip_consistency_first``), means over clips.
    Frames go through the folder's own CLIPImageProcessor (grey repeated to RGB)."""
    videos = check_videos(videos, "videos")
    model, processor = load_clip_vision(model_dir)
    n, t = videos.shape[:2]
    frames = ((videos.flatten(0, 1) + 1) / 2).clamp(0, 1)
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    embeds = []
    for i in range(0, frames.shape[0], batch_size):
        pixels = processor(images=list(frames[i:i + batch_size]), return_tensors="pt", do_rescale=False)
        embeds.append(model(pixel_values=pixels["pixel_values"]).image_embeds)
    emb = F.normalize(torch.cat(embeds).double(), dim=-1).view(n, t, -1)
    previous = (emb[:, 1:] * emb[:, :-1]).sum(-1).mean(1)
    first = (emb[:, 1:] * emb[:, :1]).sum(-1).mean(1)
    return {"clip_consistency_previous": float(previous.mean()), "clip_consistency_first": float(first.mean())}
