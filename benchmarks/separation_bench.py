"""Full-size MossFormer2 (16 kHz, 2 speakers, 55.7M parameters) separating long audio on the CPU: mtp's
speech_separation pipeline side by side with ClearerVoice-Studio's own implementation (the `clearvoice` package,
its MossFormer2_SS_16K network and decoder), same weights, same audio, same run.

    python benchmarks/separation_bench.py                        # 60 s of audio, 2 threads each side
    python benchmarks/separation_bench.py --seconds 3 --threads 1 --clip-s 3.5
    python benchmarks/separation_bench.py --weights path/to/last_best_checkpoint.pt

Run it from mtp's main environment. The ClearerVoice children run in the peer environment of
scripts/separation_peer_env.sh (clearvoice 0.1.2, the same torch 2.11.0 build), found (and built once, if
missing) by `bash scripts/separation_peer_env.sh --python`, or given with --peer-python.

Same weights: the official checkpoint cannot be downloaded here, so by default the parent builds mtp's full-size
`MossFormer2()` with a fixed seed (random weights) and saves its state dict in ClearerVoice's checkpoint layout
(`{'model': state_dict}` as checkpoints/MossFormer2_SS_16K/last_best_checkpoint.pt, named by the text file
last_best_checkpoint), which both sides load: ClearerVoice through its own `SpeechModel.load_model`, mtp through
`SpeechSeparationPipeline(backbone="mossformer2", weights=...)`. `--weights PATH` uses a real checkpoint instead
(ClearerVoice's release or any {'model': sd} / bare state dict of this model); it is loaded strictly into our
model and re-saved in the same layout. Each side's loaded state dict is hashed (names, dtypes, shapes, bytes)
in the equality children and checked against the checkpoint's: ClearerVoice's loader skips missing or misshapen
keys silently, so a partial load would otherwise go unnoticed.

Audio: FSDD recordings (8 kHz) of two speakers, resampled to 16 kHz, each speaker's utterances one after another
with short pauses, the two tracks overlapping (`mtp.datasets.speech_separation.make_stream`), written as a 16-bit
mono WAV file that both sides read.

1. Outputs equal first (case `outputs_equal`): a --clip-s clip (default 3.5 s) goes through ClearerVoice's
   `ClearVoice(...)(wav)` in one pass (its one_time_decode_length raised above the clip; 3.5 s = its 2 s window
   + one 1.5 s stride, a length its decoder does not pad); the exact array its network receives (ClearerVoice
   normalises the file to -25 dB first) is captured with a forward pre-hook and separated by mtp's
   `separate_array` in one pass. Both rescale each estimate to that input's RMS. Reported: the largest absolute
   difference (also relative to the reference's peak) and SI-SNR of ours against theirs per speaker; `equal` when
   SI-SNR >= 60 dB and max |diff| <= 1e-4 x peak (float32 accumulation-order noise through 24 blocks, far below
   any real difference). When they are not equal the speed-up line is refused (`refused`, figures null).
2. Timing (cases `clearvoice`, `mtp`), each in a fresh child whose peak RSS is its ru_maxrss (os.wait4):
   --seconds (default 60) of audio from the WAV file to the separated arrays in memory (nothing written).
   ClearerVoice: `ClearVoice(task='speech_separation', model_names=['MossFormer2_SS_16K'])(wav)` with its
   shipped config (one_time_decode_length 2 s, decode_window 2 s: 2 s windows every 1.5 s, each keeping all but
   0.25 s at its inner edges, the input zero-padded to whole strides). mtp: `pipeline(wav)` with segment_s = their
   window, overlap_s = their window - stride (0.5 s): the same segment length and hop; ours cross-fades the
   overlap and aligns each segment's speaker order to the previous one, and runs --batch-segments segments per
   forward (default: the pipeline's own, 4). ClearerVoice normalises the input to -25 dB before the network, ours
   does not (the level changes no cost).
3. A `speedup` line: ClearerVoice's seconds / ours, ours' peak RSS / theirs; the issue's goal is a speed-up of at
   least 1.3 with no more memory (rss_ratio <= 1), with equal outputs.

Fields of a case line: seconds (separation, file read included), real_time_factor = seconds / audio seconds,
load_s (building the model and loading the checkpoint), total_s / cpu_s (the child's wall and CPU seconds,
interpreter start and imports included), peak_rss_mib, model_calls / segments (forward calls of the network and
the segments they carried), segment_s / hop_s, loadavg_before/after, versions. Timings only mean something on an
otherwise idle machine: read the load averages.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from child_run import peer_python, run_worker, state_dict_hash, torch_versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
CV_NAME = "MossFormer2_SS_16K"
GOAL = 1.3              # the issue: at least 1.3x ClearerVoice's throughput, no more memory
EQUAL_SI_SNR_DB = 60.0  # ours against theirs, every speaker
EQUAL_REL_DIFF = 1e-4   # max |ours - theirs| / max |theirs|


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call_counter(model) -> list:
    """Forward pre-hook counting the network's calls; the list holds each call's batch size."""
    calls: list = []
    model.register_forward_pre_hook(lambda module, args: calls.append(int(args[0].shape[0])))
    return calls


# --------------------------------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------------------------------

def _clearvoice(spec: dict):
    """ClearerVoice's own entry point; its config's checkpoint_dir (checkpoints/MossFormer2_SS_16K) is relative to
    the working directory, where the parent linked the checkpoint."""
    import torch
    from clearvoice import ClearVoice

    started = time.perf_counter()
    cv = ClearVoice(task="speech_separation", model_names=[CV_NAME])
    load_s = time.perf_counter() - started
    net = cv.models[0]
    if net.device.type != "cpu":
        raise RuntimeError(f"ClearerVoice chose device {net.device}; the benchmark is CPU-only")
    return cv, net, load_s, torch


def _clearvoice_versions(torch) -> dict:
    import importlib.metadata as md

    import numpy

    return {"clearvoice": md.version("clearvoice"), "torch": torch.__version__, "numpy": numpy.__version__,
            "rotary_embedding_torch": md.version("rotary-embedding-torch"), "torch_threads": torch.get_num_threads()}


def _stack_clearvoice(result):
    """ClearVoice returns, for separation, a list of num_spks arrays (channels, T): -> (num_spks, T) float32."""
    import numpy as np

    return np.stack([np.asarray(r, dtype=np.float32).reshape(-1) for r in result])


def run_clearvoice_equal(spec: dict) -> dict:
    import numpy as np

    _set_threads(spec["threads"])
    cv, net, load_s, torch = _clearvoice(spec)
    settings = {"one_time_decode_length": float(net.args.one_time_decode_length),
                "decode_window": float(net.args.decode_window), "num_spks": int(net.args.num_spks),
                "sampling_rate": int(net.args.sampling_rate)}
    weights_hash = state_dict_hash(net.model.state_dict())
    captured = []
    net.model.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().clone()))
    net.args.one_time_decode_length = spec["clip_s"] + 1.0   # one pass over the clip
    result = cv(input_path=spec["wav"], online_write=False)
    if len(captured) != 1:
        raise RuntimeError(f"expected one network call on the clip, saw {len(captured)}")
    np.savez(spec["out_npz"], estimates=_stack_clearvoice(result), model_input=captured[0][0].numpy())
    return {"settings": settings, "weights_hash": weights_hash, "load_s": load_s,
            "input_samples": int(captured[0].shape[-1]), "versions": _clearvoice_versions(torch)}


def run_clearvoice_time(spec: dict) -> dict:
    import numpy as np

    _set_threads(spec["threads"])
    cv, net, load_s, torch = _clearvoice(spec)
    calls = _call_counter(net.model)
    started = time.perf_counter()
    result = cv(input_path=spec["wav"], online_write=False)
    seconds = time.perf_counter() - started
    np.save(spec["out_npy"], _stack_clearvoice(result))
    window = float(net.args.decode_window)
    return {"seconds": seconds, "load_s": load_s, "model_calls": len(calls), "segments": sum(calls),
            "segment_s": window, "hop_s": int(RATE * window * 0.75) / RATE,
            "one_time_decode_length": float(net.args.one_time_decode_length), "batch_segments": 1,
            "versions": _clearvoice_versions(torch)}


def _mtp_pipeline(spec: dict):
    import torch

    from mtp.pipelines.speech_separation.pipeline import SpeechSeparationPipeline

    started = time.perf_counter()
    options = {"segment_s": spec["segment_s"], "overlap_s": spec["overlap_s"]}
    if spec.get("batch_segments"):
        options["batch_segments"] = spec["batch_segments"]
    pipe = SpeechSeparationPipeline(backbone="mossformer2", weights=spec["checkpoint"], device="cpu", **options)
    return pipe, time.perf_counter() - started, torch


def run_mtp_equal(spec: dict) -> dict:
    import numpy as np

    _set_threads(spec["threads"])
    pipe, load_s, torch = _mtp_pipeline(spec)
    weights_hash = state_dict_hash(pipe.model.state_dict())
    calls = _call_counter(pipe.model)
    model_input = np.load(spec["in_npz"])["model_input"]
    estimates = pipe.separate_array(model_input, RATE)
    if len(calls) != 1:
        raise RuntimeError(f"expected one network call on the clip, saw {len(calls)}")
    np.save(spec["out_npy"], estimates.numpy().astype(np.float32))
    return {"weights_hash": weights_hash, "load_s": load_s, "versions": torch_versions()}


def run_mtp_time(spec: dict) -> dict:
    import numpy as np

    _set_threads(spec["threads"])
    pipe, load_s, torch = _mtp_pipeline(spec)
    calls = _call_counter(pipe.model)
    started = time.perf_counter()
    result = pipe(spec["wav"])
    seconds = time.perf_counter() - started
    np.save(spec["out_npy"], result["sources"][:, 0].numpy().astype(np.float32))   # (speakers, T), mono
    return {"seconds": seconds, "load_s": load_s, "model_calls": len(calls), "segments": sum(calls),
            "segment_s": pipe.config["segment_s"], "hop_s": pipe.config["segment_s"] - pipe.config["overlap_s"],
            "batch_segments": pipe.batch_segments, "versions": torch_versions()}


WORKERS = {"clearvoice_equal": run_clearvoice_equal, "clearvoice": run_clearvoice_time,
           "mtp_equal": run_mtp_equal, "mtp": run_mtp_time}


# --------------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------------

def run_child(python: str, spec: dict, case_dir: Path, threads: int) -> dict:
    """One case in a fresh interpreter: its result, wall time and its own peak RSS (wait4 rusage)."""
    return run_worker(python, __file__, spec, case_dir, threads,
                      extra_env={"TQDM_DISABLE": "1"}, cwd=spec.get("cwd", case_dir))


def write_checkpoint(folder: Path, weights: str | None, seed: int) -> dict:
    """Our full-size MossFormer2 (seeded random weights, or --weights) saved in ClearerVoice's layout."""
    import torch

    from mtp.backbones.mossformer2 import MossFormer2, state_dict_from_checkpoint

    torch.manual_seed(seed)
    model = MossFormer2()
    if weights:
        model.load_state_dict(state_dict_from_checkpoint(torch.load(weights, map_location="cpu", weights_only=True)),
                              strict=True)
    params = sum(p.numel() for p in model.parameters())
    state = model.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "last_best_checkpoint.pt"
    torch.save({"model": state}, path)
    (folder / "last_best_checkpoint").write_text(path.name + "\n")
    return {"path": str(path), "hash": state_dict_hash(state), "params": params,
            "source": weights or f"random (MossFormer2() with torch.manual_seed({seed}))"}


def write_mixture(path: Path, seconds: float, speakers: tuple[str, str], seed: int) -> None:
    from mtp.datasets.speech_separation import fsdd_files, make_stream, write_audio
    from mtp.files import data_dir

    root = data_dir() / "speech" / "fsdd"
    files = {s: [f.path for f in fsdd_files(root, takes=range(5), speakers=[s])] for s in speakers}
    mixture, _ = make_stream(files[speakers[0]], files[speakers[1]], seconds, sample_rate=RATE, seed=seed)
    write_audio(path, mixture, RATE, subtype="PCM_16")


def si_snr_db(estimate, reference) -> float:
    import numpy as np

    est = estimate.astype(np.float64) - estimate.mean()
    ref = reference.astype(np.float64) - reference.mean()
    target = (est @ ref) / max(ref @ ref, 1e-300) * ref
    noise = est - target
    return float(10 * np.log10(max(target @ target, 1e-300) / max(noise @ noise, 1e-300)))


def best_order_si_snr(ours, theirs) -> tuple[list, list]:
    import itertools

    n = len(theirs)
    scored = [(p, [si_snr_db(ours[p[k]], theirs[k]) for k in range(n)]) for p in itertools.permutations(range(n))]
    order, values = max(scored, key=lambda item: sum(item[1]))
    return list(order), values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length of the timed runs")
    parser.add_argument("--clip-s", type=float, default=3.5, help="clip of the output-equality check (one pass on "
                        "both sides; 3.5 s is a length ClearerVoice's decoder does not pad)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--weights", default=None, help="a real MossFormer2_SS_16K checkpoint ({'model': sd} or a "
                        "state dict); default: random weights with --seed")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (without --weights) and audio seed")
    parser.add_argument("--speakers", default="jackson,nicolas", help="two FSDD speakers")
    parser.add_argument("--batch-segments", type=int, default=None, help="mtp's segments per forward (default: "
                        "the pipeline's own)")
    parser.add_argument("--peer-python", default=None, help="python of the clearvoice environment (default: "
                        "`bash scripts/separation_peer_env.sh --python`, which builds it once)")
    parser.add_argument("--keep", default=None, help="keep the checkpoint, audio, outputs and child logs here")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(WORKERS[spec["case"]](spec)))
        return 0

    if args.seconds <= 0 or args.clip_s <= 0:
        parser.error("--seconds and --clip-s must be positive")
    if args.threads < 1:
        parser.error("--threads: expected 1 or more")
    speakers = tuple(s.strip() for s in args.speakers.split(","))
    if len(speakers) != 2:
        parser.error("--speakers: expected two FSDD speakers, comma-separated")
    if "MTP_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
        os.environ["MTP_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    peer = peer_python(REPO / "scripts" / "separation_peer_env.sh", args.peer_python, "separation_bench")
    base = {"bench": "separation_bench", "model": CV_NAME, "threads": args.threads}

    with tempfile.TemporaryDirectory(prefix="separation_bench_") as tmp:
        scratch = Path(args.keep) if args.keep else Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        ckpt = write_checkpoint(scratch / "checkpoints" / CV_NAME, args.weights, args.seed)
        clip_wav, long_wav = scratch / f"clip_{args.clip_s:g}s.wav", scratch / f"mixture_{args.seconds:g}s.wav"
        write_mixture(clip_wav, args.clip_s, speakers, args.seed + 1)
        write_mixture(long_wav, args.seconds, speakers, args.seed)
        common = {"threads": args.threads, "checkpoint": ckpt["path"], "cwd": str(scratch)}

        # 1. outputs equal first
        cv_eq = run_child(peer, {**common, "case": "clearvoice_equal", "wav": str(clip_wav), "clip_s": args.clip_s,
                                 "out_npz": str(scratch / "clearvoice_equal" / "out.npz")},
                          scratch / "clearvoice_equal", args.threads)
        settings = cv_eq["settings"]
        if settings["sampling_rate"] != RATE or settings["num_spks"] != 2:
            raise SystemExit(f"separation_bench: ClearerVoice's {CV_NAME} config is {settings}, not 16 kHz 2 speakers")
        window = settings["decode_window"]
        hop = int(RATE * window * 0.75) / RATE        # their stride: int(window * 0.75) samples
        ours = {"segment_s": window, "overlap_s": round(window - hop, 6), "batch_segments": args.batch_segments}
        mtp_eq = run_child(sys.executable, {**common, **ours, "case": "mtp_equal",
                                            "segment_s": max(window, args.clip_s + 1.0),   # one pass over the clip
                                            "in_npz": str(scratch / "clearvoice_equal" / "out.npz"),
                                            "out_npy": str(scratch / "mtp_equal" / "out.npy")},
                           scratch / "mtp_equal", args.threads)
        import numpy as np

        theirs = np.load(scratch / "clearvoice_equal" / "out.npz")["estimates"]
        mine = np.load(scratch / "mtp_equal" / "out.npy")
        if mine.shape != theirs.shape:
            raise RuntimeError(f"estimates of different shapes: mtp {mine.shape}, clearvoice {theirs.shape}")
        diff = float(np.abs(mine - theirs).max())
        peak = float(np.abs(theirs).max())
        snrs = [si_snr_db(mine[k], theirs[k]) for k in range(len(theirs))]
        weights_ok = {"clearvoice": cv_eq["weights_hash"] == ckpt["hash"],
                      "mtp": mtp_eq["weights_hash"] == ckpt["hash"]}
        finite = bool(np.isfinite(mine).all() and np.isfinite(theirs).all() and peak > 0)
        equal = bool(finite and all(weights_ok.values()) and min(snrs) >= EQUAL_SI_SNR_DB
                     and diff <= EQUAL_REL_DIFF * peak)
        print(json.dumps({**base, "case": "outputs_equal", "clip_s": args.clip_s,
                          "samples": cv_eq["input_samples"], "max_abs_diff": diff, "reference_peak": round(peak, 6),
                          "max_abs_diff_rel": diff / peak if peak else None,
                          "si_snr_db": [round(s, 2) for s in snrs], "equal": equal,
                          "tolerance": {"si_snr_db_min": EQUAL_SI_SNR_DB, "max_abs_diff_rel": EQUAL_REL_DIFF},
                          "weights": ckpt["source"], "params": ckpt["params"],
                          "weights_loaded_identically": weights_ok,
                          "decode": "one pass on both sides (ClearerVoice's one_time_decode_length raised above the "
                                    "clip); mtp separates the array ClearerVoice's network received (after its -25 dB "
                                    "input normalisation)",
                          "clearvoice_config": settings, "versions": {"clearvoice": cv_eq["versions"],
                                                                      "mtp": mtp_eq["versions"]}}), flush=True)

        # 2. timing
        lines = {}
        cases = (("clearvoice", peer, {}), ("mtp", sys.executable, ours))
        for case, python, extra in cases:
            r = run_child(python, {**common, **extra, "case": case, "wav": str(long_wav),
                                   "out_npy": str(scratch / case / "out.npy")}, scratch / case, args.threads)
            line = {**base, "case": case, "impl": "ClearerVoice-Studio (clearvoice)" if case == "clearvoice" else "mtp",
                    "audio_s": args.seconds, "seconds": round(r["seconds"], 3),
                    "real_time_factor": round(r["seconds"] / args.seconds, 4), "load_s": round(r["load_s"], 2),
                    "peak_rss_mib": r["peak_rss_mib"], "total_s": r["total_s"], "cpu_s": r["cpu_s"],
                    "model_calls": r["model_calls"], "segments": r["segments"], "segment_s": r["segment_s"],
                    "hop_s": r["hop_s"], "batch_segments": r["batch_segments"], "outputs_equal": equal,
                    "weights": ckpt["source"], "loadavg_before": r["loadavg_before"],
                    "loadavg_after": r["loadavg_after"], "versions": r["versions"]}
            if case == "clearvoice":
                line["one_time_decode_length"] = r["one_time_decode_length"]
            lines[case] = line
            print(json.dumps(line), flush=True)

        a, b = np.load(scratch / "mtp" / "out.npy"), np.load(scratch / "clearvoice" / "out.npy")
        n = min(a.shape[-1], b.shape[-1])
        order, long_snrs = best_order_si_snr(a[:, :n], b[:, :n])
        cv, mine_line = lines["clearvoice"], lines["mtp"]
        speedup = round(cv["seconds"] / mine_line["seconds"], 3)
        rss_ratio = round(mine_line["peak_rss_mib"] / cv["peak_rss_mib"], 3)
        out = {**base, "case": "speedup", "impl": "clearvoice / mtp", "audio_s": args.seconds,
               "speedup": speedup if equal else None, "rss_ratio": rss_ratio if equal else None,
               "seconds": [mine_line["seconds"], cv["seconds"]], "peak_rss_mib": [mine_line["peak_rss_mib"],
                                                                                 cv["peak_rss_mib"]],
               "outputs_equal": equal, "goal": GOAL,
               "meets_goal": bool(equal and speedup >= GOAL and rss_ratio <= 1.0),
               "long_outputs_si_snr_db": [round(s, 2) for s in long_snrs], "long_outputs_order": order,
               "weights": ckpt["source"], "loadavg_before": cv["loadavg_before"],
               "loadavg_after": mine_line["loadavg_after"]}
        if not equal:
            out["refused"] = "the outputs differ beyond float32 noise (see the outputs_equal line): no speed-up claimed"
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
