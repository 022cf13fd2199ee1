"""The `mtp` command. Nothing heavy is imported until a subcommand needs it, so `mtp --help` is instant."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click



def _options(pairs: tuple[str, ...]) -> dict:
    from mtp.config import parse_override

    return dict(parse_override(p) for p in pairs)


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns the project's own input errors into one readable line and exit status 2, not a traceback."""

    def invoke(self, ctx):
        from mtp.config import RecipeError
        from mtp.registry import UnknownNameError

        from mtp.files import DownloadError

        expected = (RecipeError, UnknownNameError, FileExistsError, FileNotFoundError, DownloadError)
        try:
            return super().invoke(ctx)
        except expected as err:
            _fail(str(err))
        except ValueError as err:  # WeightsError, InputError and the tasks' own input checks
            if type(err).__module__.startswith("mtp"):
                _fail(str(err))
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mtp-pipelines")
def main():
    """mtp: task-specific deep-learning pipelines (super-resolution, forecasting, ...) behind one API.

    \b
    Examples:
      mtp list tasks
      mtp predict super_resolution --weights IMDN_x4.pth --input photos/ --output upscaled/
      mtp run recipes/ett_itransformer.yaml train.epochs=3
    """
    import logging

    handler = logging.StreamHandler(sys.stderr)  # warnings on the terminal; stdout holds only results
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("mtp").addHandler(handler)


@main.command()
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue the run folder's last checkpoint (after a kill).")
@click.option("--overwrite", is_flag=True, help="Delete an existing run folder and start again.")
@click.option("--allow-inexact-resume", is_flag=True,
              help="Resume from a mid-epoch checkpoint although it is not bit-exact (recorded in metrics.json).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(recipe, overrides, resume, overwrite, allow_inexact_resume, quiet):
    """Train and evaluate RECIPE (a YAML file, or a recipe's name from `mtp list recipes`); OVERRIDES are
    KEY=VALUE with dotted keys, e.g. train.lr=3e-4.

    Writes runs/<name>/: config.yaml (resolved), metrics.json, checkpoints/, logs/, run.log and plots.
    """
    from mtp.config import load_recipe

    config = load_recipe(recipe, list(overrides))
    from mtp import engine

    result = engine.run(config, resume=resume, overwrite=overwrite, progress=not quiet,
                        allow_inexact_resume=allow_inexact_resume)
    click.echo(json.dumps(result["metrics"], indent=2))
    click.echo(f"run folder: {engine.run_dir_for(config)}", err=True)


@main.command()
@click.argument("task")
@click.option("--input", "-i", "input_", required=True, type=click.Path(exists=True, path_type=Path),
              help="A file or a folder (searched recursively).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--backbone", "-b", default=None, help="Registered backbone (see `mtp list backbones`).")
@click.option("--weights", "-w", default=None, help="Checkpoint path or URL.")
@click.option("--batch-size", default=1, show_default=True)
@click.option("--workers", default=0, show_default=True, help="DataLoader workers for reading inputs.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--dtype", default=None, help="float32 (default), float16 or bfloat16.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (default: keep them, resume).")
@click.option("--option", "-O", "option", multiple=True, help="Task option KEY=VALUE, e.g. -O tile=256.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--devices", default=1, show_default=True,
              help="Processes on this machine (one per GPU); >1 shards the inputs through torchrun.")
@click.option("--num-nodes", default=1, show_default=True,
              help="Machines; start the same command on each (torchrun reads MASTER_ADDR/MASTER_PORT/NODE_RANK).")
def predict(task, input_, output, backbone, weights, batch_size, workers, device, dtype, overwrite, option, quiet,
            devices, num_nodes):
    """Run TASK over --input and write results to --output, mirroring the input tree.

    Broken inputs are skipped and listed in OUTPUT/failures.json; the exit status is then 1. With --devices N
    (and --num-nodes M) the inputs are split across N x M processes; each resumes on its own, and one
    failures.json lists the failures of all.
    """
    from mtp import Pipeline

    if devices < 1 or num_nodes < 1:
        _fail("--devices and --num-nodes must be at least 1")
    if devices * num_nodes > 1 and "LOCAL_RANK" not in os.environ:
        sys.exit(_launch_distributed(devices, num_nodes))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        return _predict_shard(task, input_, output, backbone, weights, batch_size, workers, device, dtype,
                              overwrite, option, quiet)
    pipe = Pipeline(task, backbone=backbone, weights=weights, device=device, dtype=dtype, **_options(option))
    report = pipe(str(input_), output=output, batch_size=batch_size, num_workers=workers,
                  overwrite=overwrite, progress=not quiet)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


def _launch_distributed(devices: int, num_nodes: int) -> int:
    """Re-run this command under torchrun, one process per device; the launcher is torch's own."""
    argv, skip = [], False
    for arg in sys.argv[1:]:  # drop --devices/--num-nodes so the children run one shard each
        if skip:
            skip = False
            continue
        if arg in ("--devices", "--num-nodes"):
            skip = True
            continue
        if arg.startswith(("--devices=", "--num-nodes=")):
            continue
        argv.append(arg)
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={devices}", f"--nnodes={num_nodes}"]
    if num_nodes == 1:
        launcher.append("--standalone")
    else:
        launcher += [f"--node-rank={os.environ.get('NODE_RANK', '0')}",
                     f"--master-addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
                     f"--master-port={os.environ.get('MASTER_PORT', '29500')}"]
    import subprocess

    return subprocess.call([*launcher, "-m", "mtp.cli", *argv])


def _predict_shard(task, input_, output, backbone, weights, batch_size, workers, device, dtype, overwrite, option,
                   quiet):
    """One process of a distributed predict: every world-th item; rank 0 merges the failure reports."""
    import torch
    import torch.distributed as dist

    from mtp import Pipeline
    from mtp.files import write_text_atomic
    from mtp.pipeline import FAILURES_FILE

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        pipe = Pipeline(task, backbone=backbone, weights=weights, device=f"cuda:{local}" if use_cuda else
                        ("cpu" if device == "auto" else device), dtype=dtype, **_options(option))
        report = pipe(str(input_), output=output, batch_size=batch_size, num_workers=workers, overwrite=overwrite,
                      progress=not quiet and rank == 0, shard=(rank, world))
        reports = [None] * world
        dist.all_gather_object(reports, {"failures": [f.__dict__ for f in report.failures],
                                         "items_written": report.items_written, "files": len(report.written),
                                         "skipped": len(report.skipped_existing), "ignored": len(report.ignored),
                                         "seconds": report.seconds})
        failed = sum(len(r["failures"]) for r in reports)
        if rank == 0:
            for r in range(world):
                (Path(output) / f".failures.rank{r}.json").unlink(missing_ok=True)
            merged = Path(output) / FAILURES_FILE
            if failed:
                body = {"task": task, "failed": [f for r in reports for f in r["failures"]],
                        "items_written": sum(r["items_written"] for r in reports),
                        "skipped_existing": sum(r["skipped"] for r in reports), "processes": world}
                write_text_atomic(merged, json.dumps(body, indent=2))
            elif merged.exists():
                merged.unlink()
            click.echo(f"{sum(r['items_written'] for r in reports)} items done ({sum(r['files'] for r in reports)} "
                       f"files), {sum(r['skipped'] for r in reports)} already done, {failed} failed, "
                       f"{reports[0]['ignored']} ignored in {max(r['seconds'] for r in reports):.1f} s by {world} "
                       f"processes -> {output}")
            if failed:
                click.echo("failed:\n" + "\n".join(f"  {f['input']}: {f['error']}" for r in reports
                                                    for f in r["failures"]) + f"\nfailures report: {merged}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.exit(1 if failed else 0)


@main.command(name="eval")
@click.argument("task")
@click.option("--data", "-d", required=True, help="Dataset: a registered name, a folder or a file.")
@click.option("--backbone", "-b", default=None)
@click.option("--weights", "-w", default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default=None)
@click.option("--option", "-O", "option", multiple=True, help="Task option KEY=VALUE.")
@click.option("--metric-option", "-M", multiple=True, help="Metric option KEY=VALUE, e.g. -M protocol=matlab.")
def eval_(task, data, backbone, weights, device, dtype, option, metric_option):
    """Evaluate a model on DATA with TASK's metric; prints JSON."""
    from mtp import Pipeline

    pipe = Pipeline(task, backbone=backbone, weights=weights, device=device, dtype=dtype, **_options(option))
    click.echo(json.dumps(pipe.evaluate(data, **_options(metric_option)), indent=2))


@main.command(name="list")
@click.argument("what", type=click.Choice(["tasks", "backbones", "recipes", "datasets", "metrics"]))
def list_(what):
    """Print the registered tasks, backbones, datasets, metrics, or the recipes found."""
    if what == "recipes":
        import yaml

        from mtp.config import recipe_files

        for path in recipe_files():
            desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
            click.echo(f"{path.stem:34s} {desc}  ({path})")
        return
    from mtp import registry

    reg = {"tasks": registry.TASKS, "backbones": registry.BACKBONES, "datasets": registry.DATASETS,
           "metrics": registry.METRICS}[what]
    for entry in reg:
        detail = entry.get("description", "") or ""
        if what == "backbones":
            releases = f" weights: {', '.join(entry.weights)}" if entry.weights else ""
            detail = f"[{', '.join(entry.tasks)}] {detail}{releases}"
        click.echo(f"{entry.name:24s} {detail}")


@main.command()
@click.argument("weights")
def info(weights):
    """Describe a checkpoint: nesting, tensors, parameters, and the architecture if it is recognised."""
    from mtp.weights import describe

    click.echo(json.dumps(describe(weights), indent=2, default=str))


if __name__ == "__main__":
    main()
