"""Validation WER of trained FSDD recognisers, for choosing between recipe variants without the test takes.

Two validation sets, both from FSDD takes 5-9 (the test takes are 0-4, training 10-49):
- `strings`: the recipe's own validation split (300 seeded strings of 2-7 digits, 35 % single digits), the set
  that picks `best.ckpt` and ranks the epochs for `train.average_best`, so a run's best epoch is optimistically
  scored on it;
- `isolated`: the 300 isolated digit files of takes 5-9, the same kind of input as the isolated-digit test, and
  used by no run for any choice.

    MTP_DATA_DIR=../shared/data bash scripts/env.sh python benchmarks/asr_validation.py \
        --weights runs/a/model.safetensors,runs/b/model.safetensors [--lexicon]

One JSON line per (weights, decoder, set). `--lexicon` adds beam search constrained to the ten digit words.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "speech_recognition" / "squeezeformer_fsdd.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="exported runs' model.safetensors, comma-separated")
    parser.add_argument("--lexicon", action="store_true", help="also decode with a beam over the ten digit words")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mtp.config import load_recipe
    from mtp.datasets.speech_recognition import DIGIT_WORDS, fsdd_digits
    from mtp.files import data_dir

    if data_dir() is None:
        raise SystemExit("asr_validation: set MTP_DATA_DIR (the folder holding speech/fsdd/recordings)")
    recipe = load_recipe(RECIPE)
    isolated = fsdd_digits(data_dir() / "speech" / "fsdd", split="val", takes="5-9")
    with tempfile.TemporaryDirectory() as tmp:
        words = Path(tmp) / "digit_words.txt"
        words.write_text("\n".join(DIGIT_WORDS) + "\n")
        decoders = [{}] + ([{"decoder": "beam", "lexicon": str(words)}] if args.lexicon else [])
        for weights in args.weights.split(","):
            score(weights, decoders, recipe, isolated)


def score(weights: str, decoders: list[dict], recipe, isolated) -> None:
    """One JSON line per (decoder, validation set) for one trained model."""
    from mtp import Pipeline

    for options in decoders:
        pipe = Pipeline("speech_recognition", weights=weights, **options)
        for name, dataset in {"strings": pipe.datasets(recipe)["val"], "isolated": isolated}.items():
            metrics = pipe.evaluate(dataset, batch_size=32)
            print(json.dumps({"bench": "asr_validation", "weights": weights, "set": name,
                              "decoder": "beam+lexicon" if options else "greedy", "wer": metrics["wer"],
                              "reference_words": metrics["reference_words"]}), flush=True)


if __name__ == "__main__":
    main()
