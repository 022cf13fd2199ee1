"""Leave-one-case-out cross-validation of a medical segmentation recipe on its training cases, so that recipe and
inference choices are made without the test cases.

Each fold trains the recipe, unchanged but for the data root, on all training cases but one (a folder of links to
them under ``<work>/folds/``), and scores the held-out case as the recipe scores its test cases: sliding windows,
Dice and HD95 on the original grid. Every inference variant is then scored on each fold's held-out case with the
fold's own weights. A fold whose run folder already holds ``model.safetensors`` is not trained again, provided
its config.yaml shows the same recipe and overrides, and training cases that exclude the held-out one.

  MTP_DATA_DIR=../shared/data python benchmarks/medical_cv.py \\
      --recipe recipes/medical_segmentation/segresnet_brats2015.yaml

One JSON line per fold and variant, then one summary line per variant (means over the folds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# Inference variants, named; each changes the recipe's options. Declared here, before any fold is scored.
VARIANTS = {
    "recipe": {},
    "threshold_0.4": {"threshold": 0.4},
    "threshold_0.3": {"threshold": 0.3},
    "threshold_0.6": {"threshold": 0.6},
    "largest_component": {"keep_largest_component": True},
    "mirror_tta": {"mirror_tta": True},
    "overlap_0.75": {"overlap": 0.75},
}


def make_folds(root: Path, work: Path) -> list[Path]:
    """One folder per held-out training case: train/ links every other training case, test/ links that one."""
    from mtp.datasets.medical_segmentation import _split_folder

    train = _split_folder(root, "train")
    if train is None:
        raise SystemExit(f"{root}: no train/ folder of cases to cross-validate")
    cases = sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(cases) < 2:
        raise SystemExit(f"{train}: {len(cases)} case(s); leave-one-out needs at least two")
    folds = []
    for k, held_out in enumerate(cases):
        fold = work / "folds" / f"fold{k}"
        for split, members in (("train", [c for c in cases if c != held_out]), ("test", [held_out])):
            (fold / split).mkdir(parents=True, exist_ok=True)
            for case in members:
                link = fold / split / case.name
                if not link.exists():
                    link.symlink_to(case.resolve(), target_is_directory=True)
        folds.append(fold)
    return folds


def check_reusable(run: Path, expected: dict, held_out: Path) -> None:
    """Refuse a fold's run folder found in place (an earlier run, perhaps moved in by hand) that was trained with
    another recipe or overrides than this call's (its scores would be another variant's), or on the case the fold
    holds out (its score would be a training score). `expected`: this call's recipe as a dict."""
    import yaml

    def training_part(recipe: dict) -> dict:   # where the data lies and the run folder may differ
        return yaml.safe_load(yaml.safe_dump({**recipe, "output": None, "data": {**recipe["data"], "root": None}}))

    config = yaml.safe_load((run / "config.yaml").read_text())
    found, wanted = training_part(config), training_part(expected)
    if found != wanted:
        differ = sorted(k for k in wanted if wanted[k] != found.get(k))
        raise SystemExit(f"{run}: trained with another recipe or overrides (its {', '.join(differ)} differ); remove "
                         f"it or give --work another folder")
    trained = Path(config["data"]["root"]) / "train"
    if held_out.resolve() in {case.resolve() for case in trained.iterdir()}:
        raise SystemExit(f"{run}: trained on {held_out.name} (its data.root {trained.parent}), the case this fold "
                         f"holds out")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/medical_segmentation/segresnet_brats2015.yaml")
    parser.add_argument("--work", default="runs/medical_cv", help="fold links and run folders")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every fold's training (a training variant; give --work apart)")
    parser.add_argument("--output", default="runs/medical_cv.jsonl", help="JSON lines are appended here too")
    args = parser.parse_args(argv)

    from mtp import Pipeline
    from mtp.config import load_recipe
    from mtp.files import resolve_data_root

    recipe = load_recipe(args.recipe)
    root = resolve_data_root(recipe.data.root, "data.root")
    work = Path(args.work).resolve()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")

    rows = []
    with open(args.output, "a") as out:
        def emit(row: dict) -> None:
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
            out.flush()

        for fold in make_folds(root, work):
            run = work / fold.name
            if not (run / "model.safetensors").exists():
                command = [sys.executable, "-m", "mtp.cli", "run", args.recipe, f"data.root={fold}",
                           f"output.dir={work}", f"output.name={fold.name}", "--quiet", *args.override]
                print(" ".join(command), file=sys.stderr, flush=True)
                subprocess.run(command, check=True, env=dict(os.environ))
            held_out = next((fold / "test").iterdir())
            check_reusable(run, load_recipe(args.recipe, args.override).to_dict(), held_out)
            held_out = held_out.name
            for name in names:
                options = {**recipe.options, **VARIANTS[name]}
                pipe = Pipeline(recipe.task, weights=str(run / "model.safetensors"), **options)
                scores = pipe.evaluate(str(fold), split="test")
                row = {"recipe": Path(args.recipe).stem, "overrides": args.override, "fold": fold.name,
                       "held_out": held_out, "variant": name,
                       **{k: round(float(v), 4) for k, v in scores.items() if k.endswith(("_dice", "_hd95"))}}
                rows.append(row)
                emit(row)
        for name in names:
            mine = [r for r in rows if r["variant"] == name]
            keys = [k for k in mine[0] if k.endswith(("_dice", "_hd95"))]
            emit({"recipe": Path(args.recipe).stem, "overrides": args.override, "variant": name, "summary": True,
                  "folds": len(mine), **{k: round(float(np.mean([r[k] for r in mine])), 4) for k in keys}})


if __name__ == "__main__":
    main()
