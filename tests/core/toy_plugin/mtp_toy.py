"""A toy task, backbone, dataset and metric that live outside mtp and register through the ``mtp.plugins``
entry point, as a separate package would. Items are ``.npy`` / ``.values.txt`` files of numbers (or a folder
holding a ``CASE`` marker, whose files form one item); the model maps each number x to w*x + b; training data
are ``(x, y)`` rows with y = 3x + 1."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mtp.files import atomic_path
from mtp.pipeline import InputError, TaskPipeline
from mtp.registry import BACKBONES, DATASETS, METRICS, TASKS

TASK = "toy_regression"


class ToyLinear(nn.Module):
    def __init__(self, hidden: int = 1, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(1, hidden, bias=bias)
        self.out = nn.Linear(hidden, 1, bias=False) if hidden > 1 else nn.Identity()

    def forward(self, x):
        return self.out(self.fc(x[..., None]))[..., 0]


class PairsFolder(Dataset):
    """root/<split>/*.npy, each an [n, 2] array of (x, y) rows; one sample per row."""

    def __init__(self, root, split: str = "train"):
        folder = Path(root) / split
        files = sorted(folder.glob("*.npy"))
        if not files:
            raise FileNotFoundError(f"{folder}: no .npy files")
        rows = np.concatenate([np.load(f, allow_pickle=False).reshape(-1, 2) for f in files])
        self.x = torch.tensor(rows[:, 0], dtype=torch.float32)
        self.y = torch.tensor(rows[:, 1], dtype=torch.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index]}


class MeanSquaredError:
    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, prediction, target):
        self.total += float(((prediction - target) ** 2).sum())
        self.count += target.numel()

    def compute(self):
        return {"mse": self.total / self.count}


@dataclass
class ToyOptions:
    offset: float = 0.0            # added to every output (a per-call option)

    def validate(self):
        if abs(self.offset) > 1e6:
            raise ValueError(f"offset={self.offset}: expected a magnitude below 1e6")


class ToyPipeline(TaskPipeline):
    task = TASK
    default_backbone = "toy_linear"
    input_suffixes = (".npy", ".values.txt")
    Options = ToyOptions
    metrics = ("toy_mse",)
    eval_batch_size = 4

    def is_item_folder(self, folder: Path) -> bool:
        return (folder / "CASE").is_file()

    def load(self, source):
        paths = sorted(p for p in Path(source).iterdir() if p.suffix == ".npy") if Path(source).is_dir() \
            else [Path(source)]
        parts = []
        for path in paths:
            try:
                if path.name.endswith(".values.txt"):
                    parts.append(np.loadtxt(path, dtype=np.float32, ndmin=1))
                else:
                    parts.append(np.load(path, allow_pickle=False).astype(np.float32).ravel())
            except (ValueError, OSError) as err:
                raise InputError(f"{path}: not an array of numbers ({err})") from None
        if os.environ.get("MTP_TOY_FAIL_ON") and os.environ["MTP_TOY_FAIL_ON"] in str(source):
            raise InputError(f"{source}: refused on request")
        return np.concatenate(parts)

    def preprocess(self, item):
        return {"x": torch.from_numpy(item)}

    def forward(self, inputs):
        with torch.inference_mode():
            return [self.model(i["x"].to(self.device)) + self.config["offset"] for i in inputs]

    def output_paths(self, relative: Path) -> list[Path]:
        stem = self.stem(relative)
        return [relative.with_name(stem + "_pred.npy"), relative.with_name(stem + "_pred.txt")]

    def save(self, result, paths, overwrite):
        values = result.cpu().numpy()
        with atomic_path(paths[0], overwrite=overwrite) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, values)
        with atomic_path(paths[1], overwrite=overwrite) as tmp:
            tmp.write_text(" ".join(f"{v:.6f}" for v in values) + "\n")
        return list(paths)

    def evaluation_dataset(self, data, split="test"):
        return PairsFolder(data, split) if isinstance(data, (str, Path)) else data

    def evaluation_step(self, batch):
        return self.model(batch["x"]) + self.config["offset"], batch["y"]

    def training_loss(self, batch):
        global _steps
        _steps += 1
        if _steps > int(os.environ.get("MTP_TOY_KILL_AFTER_STEPS", 1 << 30)):
            os._exit(137)  # as SIGKILL would: no clean-up, no final checkpoint
        return torch.nn.functional.mse_loss(self.model(batch["x"]), batch["y"])


_steps = 0

TASKS.register(TASK, "mtp_toy:ToyPipeline", description="toy: y = w*x + b over .npy files (test plugin)")
BACKBONES.register("toy_linear", "mtp_toy:ToyLinear", {}, tasks=[TASK], description="one linear unit")
DATASETS.register("toy_pairs", "mtp_toy:PairsFolder", tasks=[TASK], description="(x, y) rows in root/<split>/*.npy")
METRICS.register("toy_mse", "mtp_toy:MeanSquaredError", tasks=[TASK], description="mean squared error")
