"""Long two-speaker audio: is one speaker kept on one output for a whole 10-minute stream?

Builds a stream from FSDD test takes (0-4) of two speakers (each speaker's utterances one after another with
short pauses, the two tracks overlapping, a relative level within +-2.5 dB; `make_stream`), separates it in one
call of the pipeline (overlapping segments, each segment's speaker order aligned to the previous one), and scores
the whole stream at once: one permutation for the whole file, so a speaker swapped between segments costs SI-SNR.
Also scores the per-mixture test list with the same model, and prints one JSON line per case:

  MTP_DATA_DIR=../shared/data python benchmarks/separation_stream.py --weights runs/conv_tasnet_fsdd/model.safetensors

`peak_rss_mib` is this process's ru_maxrss (model, stream, estimates); `--no-align` separates the segments without
the permutation alignment, to show what it buys.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a trained speech_separation model (model.safetensors)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--speakers", default="jackson,nicolas", help="two FSDD speakers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-align", action="store_true", help="keep each segment's own speaker order")
    parser.add_argument("--skip-list", action="store_true", help="do not score mixtures_test.csv")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mtp import Pipeline
    from mtp.datasets.speech_separation import fsdd_files, make_stream
    from mtp.files import data_dir
    from mtp.pipelines.speech_separation.long_audio import match_loudness, separate_long
    from mtp.pipelines.speech_separation.metrics import separation_scores

    root = (data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data") / "speech"
    pipe = Pipeline("speech_separation", weights=args.weights, device="cpu")
    rate = pipe.config["sample_rate"]
    if not args.skip_list:
        started = time.perf_counter()
        scores = pipe.evaluate(str(root / "separation" / "mixtures_test.csv"))
        print(json.dumps({"case": "mixtures_test", "weights": args.weights, **scores,
                          "seconds": round(time.perf_counter() - started, 2)}), flush=True)

    a, b = args.speakers.split(",")
    files = {s: [f.path for f in fsdd_files(root / "fsdd", takes=range(5), speakers=[s])] for s in (a, b)}
    mixture, sources = make_stream(files[a], files[b], args.minutes * 60, sample_rate=rate, seed=args.seed)
    started = time.perf_counter()
    if args.no_align:  # the pipeline's own steps, without the alignment
        segment, overlap = int(pipe.config["segment_s"] * rate), int(pipe.config["overlap_s"] * rate)
        estimates = match_loudness(separate_long(pipe.separate, mixture, pipe.config["num_speakers"], segment,
                                                 overlap, pipe.batch_segments, align=False), mixture)
    else:
        estimates = pipe.separate_array(mixture.numpy(), rate)
    seconds = time.perf_counter() - started
    scores = separation_scores(estimates, sources, mixture, with_sdr=False)
    print(json.dumps({"case": "stream", "weights": args.weights, "minutes": args.minutes, "speakers": [a, b],
                      "aligned": not args.no_align, "segment_s": pipe.config["segment_s"],
                      "overlap_s": pipe.config["overlap_s"], **{k: round(v, 4) for k, v in scores.items()},
                      "seconds": round(seconds, 2), "real_time_factor": round(seconds / (args.minutes * 60), 4),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "threads": args.threads, "loadavg": list(os.getloadavg())}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
