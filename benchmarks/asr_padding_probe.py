"""How a trained FSDD recogniser's isolated-digit errors move when silence is added around each test clip, or
when the clips are played faster or slower at the same pitch.

    MTP_DATA_DIR=../shared/data bash scripts/env.sh python benchmarks/asr_padding_probe.py \
        --weights runs/squeezeformer_fsdd/model.safetensors --pad-s 0,0.05,0.15,0.3 [--tempo 1.0,1.3,1.6]

One JSON line per (padding, tempo): the error count over the 300 test files (takes 0-4), errors per speaker and
each wrong transcript. Tempo uses the training augmentation's `change_tempo` (phase vocoder). A diagnosis tool
(the recipes test the clips as they are), not a figure to report as WER.
"""
from __future__ import annotations

import argparse
import collections
import json

import soundfile as sf
import torch

from mtp import Pipeline
from mtp.datasets.speech_recognition import DIGIT_WORDS, change_tempo
from mtp.files import data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="an exported run's model.safetensors")
    parser.add_argument("--pad-s", default="0,0.05,0.15,0.3", help="seconds of silence on each side, comma-separated")
    parser.add_argument("--tempo", default="1.0", help="tempo factors (>1 faster, pitch kept), comma-separated")
    args = parser.parse_args()
    pipe = Pipeline("speech_recognition", weights=args.weights)
    if data_dir() is None:
        raise SystemExit("asr_padding_probe: set MTP_DATA_DIR (the folder holding speech/fsdd/recordings)")
    folder = data_dir() / "speech" / "fsdd" / "recordings"
    files = sorted(p for p in folder.glob("*.wav") if int(p.stem.split("_")[2]) <= 4)
    clips = [sf.read(f, dtype="float32") for f in files]
    cases = [(float(p), float(t)) for p in args.pad_s.split(",") for t in args.tempo.split(",")]
    for pad_s, tempo in cases:
        inputs = []
        for wave, rate in clips:
            silence = torch.zeros(int(round(pad_s * rate)))
            speech = torch.from_numpy(wave)
            speech = change_tempo(speech, tempo, rate) if tempo != 1.0 else speech
            inputs.append((torch.cat([silence, speech, silence]), rate))
        outputs = pipe(inputs)
        wrong = [(f.stem, o["text"]) for f, o in zip(files, outputs)
                 if o["text"].strip() != DIGIT_WORDS[int(f.stem.split("_")[0])]]
        by_speaker = collections.Counter(stem.split("_")[1] for stem, _ in wrong)
        print(json.dumps({"bench": "asr_padding_probe", "pad_s": pad_s, "tempo": tempo, "files": len(files),
                          "errors": len(wrong), "errors_by_speaker": dict(by_speaker), "wrong": wrong}), flush=True)


if __name__ == "__main__":
    main()
