"""Long recordings through the speech_recognition pipeline: WER, real-time factor and peak RSS by length.

Each case is an FSDD recording of test digits (takes 0-4, all speakers, seeded order, short pauses;
`mtp.datasets.speech_recognition.fsdd_recording`) written as a 16-bit WAV file at FSDD's own 8 kHz, then
transcribed in one call of the pipeline from the file (`pipe(path)`: read, resample to 16 kHz, chunked inference
merged at the alignment, greedy decoding), in a fresh child whose peak RSS is its own (ru_maxrss). The child also
reports its RSS after loading the model and reading nothing (`rss_loaded_mib`), so the growth with the length is
visible: the chunked model memory is fixed; the decoded waveform and the kept alignment grow with the file.

  MTP_DATA_DIR=../shared/data python benchmarks/asr_long_audio.py --weights runs/squeezeformer_fsdd/model.safetensors
  ... --minutes 1 10 60 --threads 2

One JSON line per case.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from child_run import run_worker  # noqa: E402


def rss_mib() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def worker(spec_path: str, out_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    from mtp import Pipeline
    from mtp.pipelines.speech_recognition.metrics import WERMetric

    pipe = Pipeline("speech_recognition", weights=spec["weights"], device="cpu")
    loaded = rss_mib()
    started = time.perf_counter()
    result = pipe(spec["wav"])
    seconds = time.perf_counter() - started
    metric = WERMetric()
    metric.update([result["text"]], [spec["reference"]])
    Path(out_path).write_text(json.dumps({**metric.compute(), "seconds": round(seconds, 2),
                                          "rss_loaded_mib": loaded, "words_timed": len(result["words"])}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="a trained speech_recognition model (model.safetensors)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    if not args.weights:
        parser.error("--weights is required")

    from mtp.datasets.audio import write_audio
    from mtp.datasets.speech_recognition import fsdd_recording
    from mtp.files import data_dir

    root = (data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data") / "speech" / "fsdd"
    with tempfile.TemporaryDirectory(prefix="mtp-asr-long-") as tmp:
        for minutes in args.minutes:
            wave, reference = fsdd_recording(root, duration_s=minutes * 60, sample_rate=8000)
            wav = Path(tmp) / f"recording_{minutes:g}min.wav"
            write_audio(wav, wave, 8000)
            audio_s = wave.shape[0] / 8000
            spec = {"case": f"long_recording_{minutes:g}min", "weights": str(Path(args.weights).resolve()),
                    "wav": str(wav), "reference": reference, "threads": args.threads}
            result = run_worker(sys.executable, __file__, spec, Path(tmp) / spec["case"], args.threads)
            print(json.dumps({"case": spec["case"], "audio_seconds": round(audio_s, 2), "threads": args.threads,
                              **result, "real_time_factor": round(result["seconds"] / audio_s, 4)}), flush=True)


if __name__ == "__main__":
    main()
