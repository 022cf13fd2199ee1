"""Train and evaluate a recipe with the Lightning Trainer; write the run folder.

Domain-free: everything task-specific comes from the task pipeline's hooks (`from_recipe`, `datasets`,
`training_loss`, `validation_metrics`, `evaluate`, `write_artifacts`). Runs are reproducible and
resumable: data order and dropout are reseeded from (seed, epoch) at every epoch, so a run resumed from
`last.ckpt` after a kill ends with the same numbers as one that never stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.data import extract_batch_size
from torch.utils.data import DataLoader, Sampler

from mtp.config import Recipe, TrainConfig
from mtp.files import write_text_atomic
from mtp.weights import read_checkpoint
from mtp.registry import TASKS

log = logging.getLogger("mtp.engine")


class EpochShuffleSampler(Sampler):
    """A random permutation that depends only on (seed, epoch): resuming replays the same order.

    `on_epoch` (the dataset's `set_epoch`) is told the epoch too, so random crops change every epoch.
    """

    def __init__(self, length: int, seed: int, on_epoch=None):
        self.length, self.seed, self.epoch, self.on_epoch = length, seed, 0, on_epoch

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at each epoch start
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __iter__(self):
        # A generator: the order is drawn at the first batch, after Lightning's set_epoch (which, on a
        # resumed run, comes after the loader's iterator is made).
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        yield from torch.randperm(self.length, generator=generator).tolist()

    def __len__(self):
        return self.length


def _identity(batch):
    return batch


def make_loader(dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    # Datasets that gather whole batches at once (`__getitems__`) return them ready: no collation needed.
    collate = _identity if hasattr(dataset, "__getitems__") else getattr(dataset, "collate", None)
    set_epoch = getattr(dataset, "set_epoch", None)
    sampler = EpochShuffleSampler(len(dataset), seed, set_epoch) if shuffle else None
    # Persistent workers keep their first copy of the dataset and would never see a new epoch.
    persistent = num_workers > 0 and not (shuffle and set_epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=num_workers, collate_fn=collate, persistent_workers=persistent)


class TaskModule(L.LightningModule):
    """The Lightning view of a task pipeline: its model, its loss, the recipe's optimiser."""

    def __init__(self, pipe, train: TrainConfig, steps_per_epoch: int):
        super().__init__()
        self.model = pipe.model
        self.pipe, self.train_config, self.steps_per_epoch = pipe, train, steps_per_epoch

    def training_step(self, batch, batch_idx):
        loss = self.pipe.training_loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        # The epoch's val_loss is the mean over validation samples (Lightning weights each batch by its size).
        # The reference scripts average batches of 32 (a partial last one dropped or counted whole), which is
        # close to that; an unweighted mean of our larger evaluation batches would over-weight the last one.
        # A task that monitors another quantity (Dice, WER, accuracy) logs it from validation_metrics.
        size = extract_batch_size(batch)
        for name, value in self.pipe.validation_metrics(batch).items():
            self.log(name, value, on_epoch=True, prog_bar=True, batch_size=size)

    def configure_optimizers(self):
        return _optimizer_and_schedule(self.model.parameters(), self.train_config, self.steps_per_epoch)


def _optimizer_and_schedule(params, train: TrainConfig, steps_per_epoch: int):
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if train.optimizer not in kinds:
        raise ValueError(f"train.optimizer: unknown {train.optimizer!r}; valid: {', '.join(kinds)}")
    extra = {"betas": tuple(train.betas)} if train.optimizer != "sgd" else {"momentum": 0.9}
    params = list(params)
    # Lightning refuses to clip a fused optimiser's gradients under mixed precision (it unscales them itself)
    clipped_amp = train.grad_clip and "mixed" in str(train.precision)
    if train.optimizer != "sgd" and all(p.dtype.is_floating_point for p in params) and not clipped_amp:
        extra["fused"] = True  # one kernel for all tensors: the per-tensor loop dominates small models' steps
    optimizer = kinds[train.optimizer](params, lr=train.lr, weight_decay=train.weight_decay, **extra)
    by_step = train.max_steps > 0
    name, kwargs = train.scheduler, dict(train.scheduler_kwargs)
    interval = train.scheduler_interval or ("step" if by_step else "epoch")
    if name == "none":
        return optimizer
    if name == "halve_per_epoch":
        # thuml's `type1` sets lr0 * 0.5 ** (e - 1) after epoch e (1-based): epochs 0 and 1 both run at lr0.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 ** max(0, e - 1))
        interval = "epoch"
    elif name == "multistep":  # shorthand for MultiStepLR with train.milestones / train.gamma
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, train.milestones, gamma=train.gamma, **kwargs)
    elif name == "warmup_cosine":
        # MONAI's research recipes (SwinUNETR BraTS 2021): per epoch, linear from 0 to lr over warmup_epochs
        # (reaching lr at the last warmup epoch), then cosine to 0 at train.epochs
        warmup = int(kwargs.pop("warmup_epochs", 0))
        if kwargs or not 0 <= warmup < train.epochs:
            raise ValueError(f"train.scheduler_kwargs for warmup_cosine: expected only warmup_epochs in "
                             f"[0, train.epochs), got {dict(train.scheduler_kwargs)}")

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return epoch / max(1, warmup - 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, train.epochs - warmup)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        interval = "epoch"
    elif name == "cosine":  # shorthand for CosineAnnealingLR over the whole run, stepped per batch
        total = train.max_steps if by_step else train.epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **{"T_max": max(1, total), **kwargs})
        interval = train.scheduler_interval or "step"
    else:  # any torch scheduler by its class name, e.g. OneCycleLR, with train.scheduler_kwargs
        valid = sorted(n for n in dir(torch.optim.lr_scheduler)
                       if (n.endswith("LR") or n == "ReduceLROnPlateau") and not n.startswith("_"))
        cls = getattr(torch.optim.lr_scheduler, name, None)
        if cls is None or name not in valid:
            from mtp.registry import unknown_name_message

            raise ValueError("train.scheduler: " + unknown_name_message(
                "scheduler", name, ["none", "halve_per_epoch", "multistep", "cosine", "warmup_cosine", *valid]))
        from mtp.config import check_kwargs

        check_kwargs(cls, {"optimizer": optimizer, **kwargs}, "train.scheduler_kwargs")
        try:
            schedule = cls(optimizer, **kwargs)
        except TypeError as err:
            raise ValueError(f"train.scheduler_kwargs for {name}: {err}") from None
    config = {"scheduler": schedule, "interval": interval}
    if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = train.scheduler_monitor  # a logged quantity, e.g. train_loss (the epoch's mean)
        config["interval"] = train.scheduler_interval or "epoch"  # the losses it follows are epoch means
    return {"optimizer": optimizer, "lr_scheduler": config}


class ReseedEachEpoch(L.Callback):
    """Dropout and augmentation draw from the global RNG: make it a function of (seed, epoch)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # At the epoch's first batch rather than at epoch start: between the two, a fresh run draws from
        # the global RNG (loader set-up) where a resumed one does not. The epoch counter is the one
        # Lightning gives samplers' set_epoch.
        if batch_idx == 0:
            L.seed_everything(self.seed + trainer.fit_loop.epoch_progress.current.processed, workers=True,
                              verbose=False)


class EMA(L.Callback):
    """Exponential moving average of the weights; validation and the final evaluation use it."""

    def __init__(self, decay: float):
        self.decay, self.shadow, self.backup = decay, None, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        params = module.model.state_dict()
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in params.items()}
            return
        with torch.no_grad():
            for key, value in params.items():
                if value.dtype.is_floating_point:
                    self.shadow[key].lerp_(value.detach(), 1 - self.decay)
                else:
                    self.shadow[key].copy_(value)

    def on_validation_start(self, trainer, module):
        if self.shadow is not None:
            self.backup = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
            module.model.load_state_dict(self.shadow)

    def on_validation_end(self, trainer, module):
        if self.backup is not None:
            module.model.load_state_dict(self.backup)
            self.backup = None

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state):
        self.decay, self.shadow = state["decay"], state["shadow"]


class BestEpochs(ModelCheckpoint):
    """The N best epochs' checkpoints for train.average_best. Its own class gives it its own state key, so
    Lightning saves and restores its ranking beside best.ckpt's on resume."""


def _callbacks(train: TrainConfig, ckpt_dir: Path, has_val: bool, monitor: tuple = ("val_loss", "min")) -> list:
    callbacks = [ReseedEachEpoch(train.seed)]
    every = {"every_n_train_steps": train.checkpoint_every_steps} if train.checkpoint_every_steps else {}
    # Without a monitor and with save_top_k=1, this rewrites last.ckpt at every epoch (or N steps).
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False, **every))
    if has_val:
        name, mode = monitor
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=name, mode=mode,
                                         save_top_k=1, enable_version_counter=False))
        if train.average_best:
            # keeps exactly the N best epochs' checkpoints (the others are deleted as better ones come)
            callbacks.append(BestEpochs(dirpath=ckpt_dir, filename="top-{epoch:03d}", monitor=name, mode=mode,
                                        save_top_k=train.average_best, auto_insert_metric_name=False,
                                        enable_version_counter=False))
        if train.patience:
            callbacks.append(EarlyStopping(monitor=name, mode=mode, patience=train.patience,
                                           min_delta=0.0, check_on_train_epoch_end=False))
    if train.ema_decay:
        callbacks.append(EMA(train.ema_decay))
    return callbacks


def run_dir_for(recipe: Recipe) -> Path:
    return Path(recipe.output.dir) / recipe.output.name


# Keys a resumed run may change: they affect speed, not the numbers.
RESUME_MAY_CHANGE = ("train.threads", "train.num_workers")


def _differences(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def check_resume(recipe: Recipe, run_dir: Path) -> None:
    """A resumed run continues the recorded one: its config.yaml, not different overrides that would rewrite
    the record as if the whole run had used them."""
    from mtp.config import RecipeError

    recorded = run_dir / "config.yaml"
    if not recorded.is_file():
        return
    old = yaml.safe_load(recorded.read_text()) or {}
    new = yaml.safe_load(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    changed = [d for d in _differences(old, new) if d[0] not in RESUME_MAY_CHANGE]
    if changed:
        lines = "\n".join(f"  {key}: {a!r} in the run, {b!r} now" for key, a, b in changed[:10])
        raise RecipeError(f"--resume: {run_dir} was run with another configuration:\n{lines}\nResume it as it was "
                          f"recorded (its config.yaml), or start a new run (output.name=...) with the new values")


def run(recipe: Recipe, resume: bool = False, overwrite: bool = False, progress: bool = True,
        allow_inexact_resume: bool = False) -> dict:
    """Train (if the recipe has a `train` section) and evaluate; return what is written to metrics.json."""
    run_dir = run_dir_for(recipe)
    last = run_dir / "checkpoints" / "last.ckpt"
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise FileExistsError(f"run folder {run_dir} already exists: pass --resume to continue it, --overwrite "
                              f"to start again, or output.name=... for a new folder")
    if resume and not last.exists():
        log.warning("--resume: %s has no checkpoint (%s); starting the run from the beginning",
                    run_dir if run_dir.exists() else f"no run folder {run_dir}", last)
    if resume:
        check_resume(recipe, run_dir)
    started = time.perf_counter()
    train = recipe.train
    if train and train.threads:
        torch.set_num_threads(train.threads)
    L.seed_everything(train.seed if train else 0, workers=True, verbose=False)
    # Model and data first: a bad recipe fails before anything is written.
    pipe = TASKS.get(recipe.task).load().from_recipe(recipe)
    splits = pipe.datasets(recipe)
    if train:
        _check_average_best(train, splits)
    split = recipe.eval.split
    if split not in splits:
        raise ValueError(f"eval.split: {split!r} is not a split of this data; valid: {', '.join(splits)}")
    if overwrite and not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _log_to_file(run_dir / "run.log"):
        if resume and not last.exists():
            log.warning("--resume: no %s yet, starting from the beginning", last)
        resumed = None
        if train and resume and last.exists():
            resumed = _resume_point(last, splits, recipe, allow_inexact_resume, pipe.train_drop_last)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        fit_seconds, averaged_from = 0.0, None
        if train:
            fit_started = time.perf_counter()
            if not pipe.fit_direct(splits, recipe):
                averaged_from = _fit(pipe, recipe, splits, run_dir / "checkpoints",
                                     last if resume and last.exists() else None, progress)
            fit_seconds = time.perf_counter() - fit_started
            from mtp.weights import export

            export(pipe, run_dir / "model.safetensors")
            pipe.untrained = False
        pipe.model.eval()
        eval_started = time.perf_counter()
        with torch.no_grad():
            metrics = pipe.evaluate(splits[split], batch_size=recipe.eval.batch_size, **recipe.eval.options)
        averaged = {"averaged_checkpoints": averaged_from} if averaged_from else {}
        if averaged_from and split != "val":
            # the averaged weights were never validated in training: their validation figures let runs be
            # compared without the test split
            with torch.no_grad():
                averaged["val_metrics_of_average"] = pipe.evaluate(splits["val"], batch_size=recipe.eval.batch_size,
                                                                   **recipe.eval.options)
        result = {"task": recipe.task, "recipe": recipe.output.name, "split": split, "metrics": metrics, **averaged,
                  **({"resumed_from": resumed} if resumed else {}),
                  "fit_seconds": round(fit_seconds, 2),
                  "eval_seconds": round(time.perf_counter() - eval_started, 2),
                  "total_seconds": round(time.perf_counter() - started, 2)}
        if recipe.output.plots:
            result["artifacts"] = [str(p) for p in pipe.write_artifacts(run_dir, splits, recipe)]
        write_text_atomic(run_dir / "metrics.json", json.dumps(result, indent=2))
        log.info("metrics: %s", json.dumps(metrics))
    return result


def _resume_point(last: Path, splits: dict, recipe: Recipe, allow_inexact: bool, drop_last: bool) -> dict:
    """Where a resume starts. From an epoch boundary it is bit-exact (data order and dropout are functions of
    (seed, epoch)); from a mid-epoch checkpoint (train.checkpoint_every_steps) it is not: the global RNG inside
    the epoch is not restored and the epoch's logged loss covers only the batches after the resume. That is
    refused unless the caller accepts it (--allow-inexact-resume), and then recorded."""
    from mtp.config import RecipeError

    state = read_checkpoint(last)
    steps = len(make_loader(splits["train"], recipe.train.batch_size, shuffle=False,
                            drop_last=drop_last))  # batches per epoch (the shuffle does not change the count)
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {}).get("current", {})
    done = int(progress.get("completed", 0) or 0)
    point = {"checkpoint": str(last), "epoch": int(state.get("epoch", 0)), "global_step": int(state.get("global_step", 0)),
             "mid_epoch": 0 < done % max(1, steps) if done else False}
    if point["mid_epoch"]:
        if not allow_inexact:
            raise RecipeError(f"--resume: {last} was saved mid-epoch (batch {done} of {steps}); resuming there does "
                              f"not give the numbers of an uninterrupted run. Pass --allow-inexact-resume to continue "
                              f"anyway (recorded in metrics.json), or resume from an epoch checkpoint")
        log.warning("resuming mid-epoch from %s (batch %d of %d): not bit-exact", last, done, steps)
    return point


def _fit(pipe, recipe: Recipe, splits: dict, ckpt_dir: Path, resume_from: Path | None,
         progress: bool) -> list[str] | None:
    """Train, then load the weights to evaluate; returns the checkpoints averaged into them (train.average_best)."""
    train = recipe.train
    train_loader = make_loader(splits["train"], train.batch_size, shuffle=True, seed=train.seed,
                               num_workers=train.num_workers, drop_last=pipe.train_drop_last)
    val_loader = None
    if splits.get("val") is not None:
        val_loader = make_loader(splits["val"], recipe.eval.batch_size, shuffle=False,
                                 num_workers=train.num_workers)
    steps_per_epoch = max(1, len(train_loader))
    pipe.model.train()  # pipelines build models in eval mode; Lightning keeps the mode it finds
    module = TaskModule(pipe, train, steps_per_epoch)
    val_every = ({"val_check_interval": train.val_every_steps, "check_val_every_n_epoch": None}
                 if train.val_every_steps else {})
    trainer = L.Trainer(
        max_epochs=train.epochs if train.max_steps <= 0 else -1, max_steps=train.max_steps,
        accelerator=train.accelerator, devices=train.devices, strategy=train.strategy,
        num_nodes=train.num_nodes, precision=train.precision, gradient_clip_val=train.grad_clip,
        callbacks=_callbacks(train, ckpt_dir, val_loader is not None, tuple(pipe.monitor)),
        logger=CSVLogger(ckpt_dir.parent, name="", version=_log_version(ckpt_dir.parent, resume_from)),
        default_root_dir=ckpt_dir.parent,
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_loader is not None else 0, **val_every)
    # Checkpoints are read as tensors and plain containers only: a planted pickle payload cannot run.
    # Lightning's progress bars write to stdout; stdout is kept for the result JSON.
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None,
                    weights_only=True)
    tops = sorted(ckpt_dir.glob("top-*.ckpt")) if train.average_best else []
    if tops:
        pipe.model.load_state_dict(_average_checkpoints(tops))
        return [p.name for p in tops]
    if train.average_best:
        log.warning("train.average_best: no epoch was validated, so there is nothing to average")
    best = ckpt_dir / "best.ckpt"
    chosen = best if best.exists() else ckpt_dir / "last.ckpt"
    state = read_checkpoint(chosen)
    ema = state.get("callbacks", {}).get("EMA")
    weights = ema["shadow"] if ema and ema.get("shadow") else {
        k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    pipe.model.load_state_dict(weights)
    log.info("evaluating weights from %s%s", chosen, " (EMA)" if ema else "")
    return None


def _check_average_best(train: TrainConfig, splits: dict) -> None:
    from mtp.config import RecipeError

    if train.average_best is None:
        return
    if isinstance(train.average_best, bool) or train.average_best < 1:
        raise RecipeError(f"train.average_best: expected a number of checkpoints >= 1, got {train.average_best!r}")
    if splits.get("val") is None:
        raise RecipeError("train.average_best: the best epochs are ranked on the validation split, and this data "
                          "has none")
    if train.ema_decay:
        raise RecipeError("train.average_best and train.ema_decay: choose one way of averaging weights")


def _average_checkpoints(paths: list[Path]) -> dict:
    """The mean of the checkpoints' model weights (ESPnet's and NeMo's checkpoint averaging). Integer buffers
    (BatchNorm's batch counters) are summed state, not weights: they are taken from the first checkpoint."""
    total, first = {}, {}
    for path in paths:
        state = read_checkpoint(path)["state_dict"]
        for key, value in state.items():
            if not key.startswith("model."):
                continue
            key = key[len("model."):]
            if key not in first:
                first[key] = value
                total[key] = value.double() if value.dtype.is_floating_point else value
            elif value.dtype.is_floating_point:
                total[key] += value.double()
    log.info("evaluating the mean weights of %d checkpoints: %s", len(paths), ", ".join(p.name for p in paths))
    return {k: (v / len(paths)).to(first[k].dtype) if v.dtype.is_floating_point else v for k, v in total.items()}


def _log_version(run_dir: Path, resume_from) -> str:
    """logs/ for a fresh run; logs_resume1/, logs_resume2/ ... for each resume, so no history is lost."""
    if resume_from is None:
        return "logs"
    n = 1
    while (run_dir / f"logs_resume{n}").exists():
        n += 1
    return f"logs_resume{n}"


@contextlib.contextmanager
def _log_to_file(path: Path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("mtp", "lightning.pytorch")]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()

