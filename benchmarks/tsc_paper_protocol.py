"""A ts_classification recipe's honest figure beside the figure its paper's protocol would report.

MPTSNet's train.py (and several published TSC repositories) evaluate TEST after every epoch and report the
best TEST accuracy over epochs. mtp never selects on TEST: the recipe keeps its best validation epoch (a
stratified part of TRAIN) and tests that once. This script trains the recipe exactly as `mtp run` does, and
also measures TEST after every epoch through a callback that changes nothing in the training (the model is put
back in training mode, the global RNG state is restored); it prints one JSON line with both figures, so the gap
between an implementation and a published number can be told apart from the gap between the protocols:

    MTP_DATA_DIR=../shared/data python benchmarks/tsc_paper_protocol.py recipes/ts_classification/mptsnet_japanesevowels.yaml

The "best over epochs" figure selects on TEST and is not a valid estimate of accuracy: it is reported only to
compare with papers that report it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile

import lightning as L
import torch


class TestEveryEpoch(L.Callback):
    """TEST accuracy at the end of every validation pass (never fed back into training or selection)."""

    def __init__(self, recipe):
        self.recipe, self.accuracies, self.test = recipe, [], None

    def on_validation_epoch_end(self, trainer, module):
        pipe = module.pipe
        if self.test is None:
            self.test = pipe.datasets(self.recipe)["test"]
        rng = torch.get_rng_state()
        training = pipe.model.training
        self.accuracies.append(pipe.evaluate(self.test)["accuracy"])
        pipe.model.train(training)
        torch.set_rng_state(rng)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    args = parser.parse_args(argv)

    from mtp import engine
    from mtp.config import load_recipe

    with tempfile.TemporaryDirectory() as out:
        recipe = load_recipe(args.recipe, [f"output.dir={out}", *args.overrides])
        callback = TestEveryEpoch(recipe)
        build_callbacks = engine._callbacks
        engine._callbacks = lambda *a, **k: [*build_callbacks(*a, **k), callback]
        result = engine.run(recipe, overwrite=True, progress=False)
    accuracies = callback.accuracies
    best = max(range(len(accuracies)), key=accuracies.__getitem__) if accuracies else None
    print(json.dumps({
        "recipe": recipe.output.name, "seed": recipe.train.seed,
        "test_accuracy": round(result["metrics"]["accuracy"], 4),  # mtp: best validation epoch, tested once
        "best_over_epochs_test_accuracy": round(accuracies[best], 4) if accuracies else None,  # the papers' protocol
        "best_over_epochs_epoch": best, "last_epoch_test_accuracy": round(accuracies[-1], 4) if accuracies else None,
        "epochs": len(accuracies), "test_accuracy_per_epoch": [round(a, 4) for a in accuracies]}))


if __name__ == "__main__":
    sys.exit(main())
