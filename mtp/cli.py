"""The `mtp` command. Nothing heavy is imported until a subcommand needs it, so `mtp --help` is instant."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

RECIPE_DIRS = (Path("recipes"), Path(__file__).resolve().parents[1] / "recipes")


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

        expected = (RecipeError, UnknownNameError, FileExistsError, FileNotFoundError)
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


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue the run folder's last checkpoint (after a kill).")
@click.option("--overwrite", is_flag=True, help="Delete an existing run folder and start again.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(recipe, overrides, resume, overwrite, quiet):
    """Train and evaluate RECIPE (YAML); OVERRIDES are KEY=VALUE with dotted keys, e.g. train.lr=3e-4.

    Writes runs/<name>/: config.yaml (resolved), metrics.json, checkpoints/, logs/, run.log and plots.
    """
    from mtp.config import load_recipe

    config = load_recipe(recipe, list(overrides))
    from mtp import engine

    result = engine.run(config, resume=resume, overwrite=overwrite, progress=not quiet)
    click.echo(json.dumps(result["metrics"], indent=2))
    click.echo(f"run folder: {engine.run_dir_for(config)}")


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
def predict(task, input_, output, backbone, weights, batch_size, workers, device, dtype, overwrite, option, quiet):
    """Run TASK over --input and write results to --output, mirroring the input tree.

    Broken inputs are skipped and listed in OUTPUT/failures.json; the exit status is then 1.
    """
    from mtp import Pipeline

    pipe = Pipeline(task, backbone=backbone, weights=weights, device=device, dtype=dtype, **_options(option))
    report = pipe(str(input_), output=output, batch_size=batch_size, num_workers=workers,
                  overwrite=overwrite, progress=not quiet)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


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
        seen = set()
        for folder in RECIPE_DIRS:
            for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
                if path.name not in seen:
                    seen.add(path.name)
                    import yaml

                    desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
                    click.echo(f"{str(path):45s} {desc}")
        return
    from mtp import registry

    reg = {"tasks": registry.TASKS, "backbones": registry.BACKBONES, "datasets": registry.DATASETS,
           "metrics": registry.METRICS}[what]
    for entry in reg:
        detail = entry.meta.get("description", "")
        if what == "backbones":
            detail = f"[{', '.join(entry.meta.get('tasks', ()))}] {detail}"
        click.echo(f"{entry.name:24s} {detail}")


@main.command()
@click.argument("weights")
def info(weights):
    """Describe a checkpoint: nesting, tensors, parameters, and the architecture if it is recognised."""
    from mtp.weights import describe

    click.echo(json.dumps(describe(weights), indent=2, default=str))


if __name__ == "__main__":
    main()
