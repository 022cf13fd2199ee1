"""Squeezeformer-CTC (NeMo's xsmall and small LibriSpeech configurations) transcribing long audio on the CPU:
mtp's speech_recognition pipeline side by side with NVIDIA NeMo's own implementation (`nemo-toolkit`: its
EncDecCTCModelBPE with SqueezeformerEncoder, AudioToMelSpectrogramPreprocessor, ConvASRDecoder and greedy CTC
decoding), same weights, same audio, same run.

    python benchmarks/asr_bench.py                          # xsmall and small, 60 s of audio, 2 threads each side
    python benchmarks/asr_bench.py --seconds 10 --threads 1 --sizes xsmall
    python benchmarks/asr_bench.py --no-chunked             # without the informative mtp_chunked case

Run it from mtp's main environment. The NeMo children run in the peer environment of scripts/asr_peer_env.sh
(nemo-toolkit[asr] 2.7.3, the same torch 2.11.0 build), found (and built once, if missing) by
`bash scripts/asr_peer_env.sh --python`, or given with --peer-python.

Same weights: the released .nemo checkpoints cannot be downloaded here, so for each size the parent builds mtp's
`SqueezeformerCTC` from the constructor kwargs of the fixture manifest
(../shared/fixtures/squeezeformer/manifest_stt_en_squeezeformer_ctc_<size>_ls.json) with a fixed seed, then
re-draws the BatchNorm running statistics and the ScaleBias scales/biases with a seeded generator (a freshly
built model has mean 0 / var 1 / scale 1 / bias 0 there, which would leave those code paths untested). Its state
dict (NeMo's key names; checked against the manifest's key list, order and shapes) is written twice:
- as a `.nemo` archive laid out as NeMo writes one (./model_config.yaml, ./model_weights.ckpt, the SentencePiece
  files as ./<hex>_tokenizer.model / _vocab.txt / _tokenizer.vocab referenced with `nemo:`), which mtp loads
  through `Pipeline("speech_recognition", weights=<.nemo>)` as it would a released model;
- as model_weights.ckpt + a tokenizer folder + a config (JSON) for NeMo: the NeMo child builds
  `EncDecCTCModelBPE(cfg)` from the config and loads the state dict with `load_state_dict(strict=True)`.
The tokenizer is a 128-piece SentencePiece BPE model (the manifests' assumed vocabulary, so the decoder has 129
classes on both sides) trained in the parent on a seeded synthetic corpus (digit words and random letter strings):
with random weights the text is meaningless, only its equality between the sides is. Each side's loaded state
dict is hashed (names, dtypes, shapes, bytes) and checked against the written one.

Audio: FSDD test digits (takes 0-4, all speakers, seeded order, short pauses;
`mtp.datasets.speech_recognition.fsdd_recording`) at 16 kHz, written as 16-bit mono WAV files that both sides read.

1. Outputs equal first (case `outputs_equal`, per size): a batch of two waveforms, the --clip-s clip (default 4 s)
   and its first 60 % zero-padded to the same length (so the length masks are exercised), read from the WAV with
   soundfile as float32 on both sides, goes end to end from waveform to log-probs: NeMo `model.forward(
   input_signal=..., input_signal_length=...)` (its preprocessor, encoder, decoder), ours
   `model.transcribe_logits(waves, lengths)` (our MelPreprocessor, encoder, decoder). Compared: the features
   (informative), encoded lengths (must be identical), log-probs on valid frames, greedy ids per frame.
   `equal` when the lengths and the greedy ids are identical, every log-prob differs by at most
   1e-4 x max|log-prob| (float32 accumulation-order noise; the fixture's tolerance is 1e-5 x on given features,
   this check also carries the front end's float32 STFT noise through every layer), and both sides loaded the
   written weights. When they are not equal the speed-up line is refused (`refused`, figures null).
2. Timing (cases `nemo`, `mtp`), each in a fresh child whose peak RSS is its ru_maxrss (os.wait4): --seconds
   (default 60) of audio from the WAV file to greedy text in one call, the whole file in ONE forward on both
   sides (like with like): NeMo `model.transcribe([wav], batch_size=1, num_workers=0, verbose=False)` (its own
   file reading, dataloader, one forward over the whole file, CTC greedy decoding, SentencePiece detokenisation);
   mtp `pipe(wav)` with chunk_s above the file's length, so the pipeline's long-audio path sends the whole file
   through one forward (read, resample check, features, encoder, decoder, greedy collapse, detokenisation, word
   timings). The forward calls are counted with a hook on the encoder (`model_calls`, `encoder_frames`: per
   call). --repeat N makes N calls in the same child and reports their median (`seconds_per_call` lists them);
   the default is the one cold call a user makes after loading the model.
   Case `mtp_chunked` (informative, not in the speed-up): the pipeline's normal long-audio path with its defaults
   (20 s chunks with 4 s of context each side, up to 4 chunks per forward: 60 s is one forward of 3 windows of up
   to 28 s), which bounds memory for any length and keeps attention's quadratic cost to the window, but computes
   the context twice and hears less context, so its alignment (and, with random weights, its text) differs from a
   full forward's. With --forward, cases `nemo_forward` / `mtp_forward` (informative) time the bare model on the
   whole file (WAV read, model.forward / transcribe_logits, argmax, greedy collapse, the tokenizer), without
   NeMo's transcribe() machinery (temporary manifest, lhotse dataloader, decoding objects) or mtp's pipeline call.
3. A `speedup` line per size: NeMo's seconds / ours, ours' peak RSS / theirs, whether the two long transcripts
   are identical; the issue's goal is a speed-up of at least 1.3 with equal outputs.

Fields of a case line: seconds (the transcription call, file read included), real_time_factor = seconds / audio
seconds, load_s (building the model and loading the weights), rss_loaded_mib (the child's ru_maxrss after imports
and loading, before the call), peak_rss_mib, total_s / cpu_s (the child's wall and CPU seconds, interpreter start
and imports included), model_calls / encoder_frames, text_words, loadavg_before/after, versions. Timings only
mean something on an otherwise idle machine: read the load averages.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from child_run import peer_python, run_worker, state_dict_hash, torch_versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "squeezeformer"
RATE = 16000
SIZES = ("xsmall", "small")
VOCAB = 128                     # the manifests' assumed SentencePiece vocabulary (decoder: VOCAB + 1 classes)
GOAL = 1.3                      # the issue: at least 1.3x NeMo's throughput at equal output
EQUAL_REL_DIFF = 1e-4           # max |ours - theirs| / max |theirs| on valid log-prob frames
SHORT_FRACTION = 0.6            # the second waveform of the equality batch: this much of the clip, zero-padded
NEMO_CLASSES = {"preprocessor": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                "encoder": "nemo.collections.asr.modules.SqueezeformerEncoder",
                "decoder": "nemo.collections.asr.modules.ConvASRDecoder"}
NEMO_MODEL_CLASS = "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE"


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _frame_counter(encoder) -> list:
    """Forward pre-hook on the encoder: each call's (batch, time frames) of the features it received."""
    calls: list = []
    encoder.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple((args[0] if args else kwargs["audio_signal"]).shape[::2])),
        with_kwargs=True)
    return calls


def _call_fields(calls: list, repeat: int) -> dict:
    """The encoder calls of the first of `repeat` identical transcriptions: count, frames and batch of each."""
    first = calls[:len(calls) // repeat]
    return {"model_calls": len(first), "encoder_frames": [t for _, t in first], "batch": [b for b, _ in first]}


def _read_wav(path: str):
    import soundfile as sf

    data, rate = sf.read(path, dtype="float32")
    if rate != RATE or data.ndim != 1:
        raise RuntimeError(f"{path}: expected 16 kHz mono, got {rate} Hz, shape {data.shape}")
    return data


def _equal_batch(path: str):
    """(waves [2, N] float32, lengths [2] int64): the clip, and its first SHORT_FRACTION zero-padded."""
    import numpy as np

    wave = _read_wav(path)
    short = int(len(wave) * SHORT_FRACTION)
    waves = np.zeros((2, len(wave)), dtype=np.float32)
    waves[0], waves[1, :short] = wave, wave[:short]
    return waves, np.array([len(wave), short], dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------------------------------

def _nemo_model(spec: dict):
    import torch
    from omegaconf import OmegaConf

    from nemo.collections.asr.models import EncDecCTCModelBPE

    started = time.perf_counter()
    cfg = OmegaConf.create(json.loads(Path(spec["nemo_config"]).read_text()))
    model = EncDecCTCModelBPE(cfg=cfg)
    state = torch.load(spec["state_dict"], map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, time.perf_counter() - started, torch


def _nemo_versions(torch) -> dict:
    import importlib.metadata as md

    import numpy

    return {"nemo_toolkit": md.version("nemo-toolkit"), "torch": torch.__version__, "numpy": numpy.__version__,
            "lightning": md.version("lightning"), "torch_threads": torch.get_num_threads()}


def run_nemo_equal(spec: dict) -> dict:
    import numpy as np

    _set_threads(spec["threads"])
    model, load_s, torch = _nemo_model(spec)
    weights_hash = state_dict_hash(model.state_dict())
    waves, lengths = _equal_batch(spec["wav"])
    with torch.inference_mode():
        signal, signal_len = torch.from_numpy(waves), torch.from_numpy(lengths)
        features, feature_lengths = model.preprocessor(input_signal=signal, length=signal_len)
        log_probs, encoded_len, greedy = model.forward(input_signal=signal, input_signal_length=signal_len)
    np.savez(spec["out_npz"], features=features.numpy(), feature_lengths=feature_lengths.numpy(),
             log_probs=log_probs.float().numpy(), encoded_lengths=encoded_len.numpy(), greedy=greedy.numpy())
    return {"weights_hash": weights_hash, "load_s": load_s, "num_classes": int(model.decoder.num_classes_with_blank),
            "versions": _nemo_versions(torch)}


def _hypothesis_text(result) -> str:
    """transcribe() returns [Hypothesis] (NeMo >= 2.0) or [str], possibly nested one level (older releases)."""
    if isinstance(result, tuple):
        result = result[0]
    first = result[0]
    if isinstance(first, list):
        first = first[0]
    return first if isinstance(first, str) else first.text


def run_nemo_time(spec: dict) -> dict:
    _set_threads(spec["threads"])
    model, load_s, torch = _nemo_model(spec)
    calls = _frame_counter(model.encoder)
    rss_loaded = _rss_mib()
    seconds = []
    for _ in range(spec["repeat"]):
        started = time.perf_counter()
        result = model.transcribe([spec["wav"]], batch_size=1, num_workers=0, verbose=False)
        seconds.append(time.perf_counter() - started)
    text = _hypothesis_text(result)
    Path(spec["out_txt"]).write_text(text)
    return {"seconds": seconds, "load_s": load_s, "rss_loaded_mib": rss_loaded,
            **_call_fields(calls, spec["repeat"]), "text_words": len(text.split()), "versions": _nemo_versions(torch)}


def _collapse(ids, blank: int) -> list[int]:
    """Greedy CTC: merge repeats, drop blanks."""
    out, previous = [], None
    for i in ids:
        if i != previous and i != blank:
            out.append(i)
        previous = i
    return out


def run_nemo_forward(spec: dict) -> dict:
    """Informative: the whole file through NeMo's model.forward (waveform -> log-probs and argmax) and greedy
    collapse + its tokenizer, without transcribe()'s manifest, dataloader and decoding objects."""
    _set_threads(spec["threads"])
    model, load_s, torch = _nemo_model(spec)
    calls = _frame_counter(model.encoder)
    blank = int(model.decoder.num_classes_with_blank) - 1
    rss_loaded = _rss_mib()
    seconds = []
    for _ in range(spec["repeat"]):
        started = time.perf_counter()
        wave = torch.from_numpy(_read_wav(spec["wav"]))[None]
        with torch.inference_mode():
            _, encoded_len, greedy = model.forward(input_signal=wave, input_signal_length=torch.tensor([wave.shape[1]]))
        text = model.tokenizer.ids_to_text(_collapse(greedy[0, :int(encoded_len[0])].tolist(), blank))
        seconds.append(time.perf_counter() - started)
    Path(spec["out_txt"]).write_text(text)
    return {"seconds": seconds, "load_s": load_s, "rss_loaded_mib": rss_loaded,
            **_call_fields(calls, spec["repeat"]), "text_words": len(text.split()), "versions": _nemo_versions(torch)}


def run_mtp_forward(spec: dict) -> dict:
    """Informative, the counterpart of run_nemo_forward: model.transcribe_logits on the whole file, argmax, collapse,
    the pipeline's tokenizer."""
    _set_threads(spec["threads"])
    pipe, load_s, torch = _mtp_pipeline(spec)
    calls = _frame_counter(pipe.model.encoder)
    blank = pipe.model.blank_index
    rss_loaded = _rss_mib()
    seconds = []
    for _ in range(spec["repeat"]):
        started = time.perf_counter()
        wave = torch.from_numpy(_read_wav(spec["wav"]))[None]
        with torch.inference_mode():
            log_probs, encoded_len = pipe.model.transcribe_logits(wave, torch.tensor([wave.shape[1]]))
        text = pipe.tokenizer.decode(_collapse(log_probs[0, :int(encoded_len[0])].argmax(-1).tolist(), blank))
        seconds.append(time.perf_counter() - started)
    Path(spec["out_txt"]).write_text(text)
    return {"seconds": seconds, "load_s": load_s, "rss_loaded_mib": rss_loaded,
            **_call_fields(calls, spec["repeat"]), "text_words": len(text.split()), "versions": torch_versions()}


def _mtp_pipeline(spec: dict, **options):
    import torch

    from mtp.pipeline import Pipeline

    started = time.perf_counter()
    pipe = Pipeline("speech_recognition", weights=spec["nemo_archive"], device="cpu", **options)
    pipe.model.eval()
    return pipe, time.perf_counter() - started, torch


def run_mtp_equal(spec: dict) -> dict:
    import numpy as np

    _set_threads(spec["threads"])
    pipe, load_s, torch = _mtp_pipeline(spec)
    model = pipe.model
    weights_hash = state_dict_hash(model.state_dict())
    waves, lengths = _equal_batch(spec["wav"])
    with torch.inference_mode():
        signal, signal_len = torch.from_numpy(waves), torch.from_numpy(lengths)
        features, feature_lengths = model.extract_features(signal, signal_len)
        log_probs, encoded_len = model.transcribe_logits(signal, signal_len)
    np.savez(spec["out_npz"], features=features.numpy(), feature_lengths=feature_lengths.numpy(),
             log_probs=log_probs.float().numpy(), encoded_lengths=encoded_len.numpy(),
             greedy=log_probs.argmax(-1).numpy())
    return {"weights_hash": weights_hash, "load_s": load_s, "num_classes": int(model.num_classes) + 1,
            "backbone": pipe.backbone_name, "versions": torch_versions()}


def run_mtp_time(spec: dict) -> dict:
    _set_threads(spec["threads"])
    pipe, load_s, torch = _mtp_pipeline(spec, **spec["options"])
    calls = _frame_counter(pipe.model.encoder)
    rss_loaded = _rss_mib()
    seconds = []
    for _ in range(spec["repeat"]):
        started = time.perf_counter()
        result = pipe(spec["wav"])
        seconds.append(time.perf_counter() - started)
    Path(spec["out_txt"]).write_text(result["text"])
    return {"seconds": seconds, "load_s": load_s, "rss_loaded_mib": rss_loaded,
            **_call_fields(calls, spec["repeat"]), "text_words": len(result["text"].split()),
            "backbone": pipe.backbone_name,
            "options": {k: pipe.config[k] for k in ("chunk_s", "context_s", "batch_chunks", "decoder", "vad")},
            "versions": torch_versions()}


WORKERS = {"nemo_equal": run_nemo_equal, "nemo": run_nemo_time, "mtp_equal": run_mtp_equal, "mtp": run_mtp_time,
           "mtp_chunked": run_mtp_time, "nemo_forward": run_nemo_forward, "mtp_forward": run_mtp_forward}


# --------------------------------------------------------------------------------------------------
# Parent: weights, tokenizer, audio
# --------------------------------------------------------------------------------------------------

def run_child(python: str, spec: dict, case_dir: Path, threads: int) -> dict:
    """One case in a fresh interpreter: its result, wall time and its own peak RSS (wait4 rusage)."""
    return run_worker(python, __file__, spec, case_dir, threads,
                      extra_env={"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})


def manifest(size: str) -> dict:
    path = FIXTURES / f"manifest_stt_en_squeezeformer_ctc_{size}_ls.json"
    if not path.is_file():
        raise SystemExit(f"asr_bench: no fixture manifest {path}")
    return json.loads(path.read_text())


def train_tokenizer(folder: Path, seed: int) -> list[str]:
    """A VOCAB-piece SentencePiece BPE model (NeMo's `bpe` tokenizer type) on a seeded synthetic corpus; writes
    tokenizer.model, tokenizer.vocab and vocab.txt (NeMo's tokenizer folder) and returns the pieces in id order."""
    import numpy as np
    import sentencepiece as spm

    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz'")
    digits = "zero one two three four five six seven eight nine".split()
    lines = [" ".join(rng.choice(digits, 8)) for _ in range(400)]
    lines += [" ".join("".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(10)) for _ in range(800)]
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=VOCAB,
                                   model_type="bpe", character_coverage=1.0, num_threads=1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (folder / "tokenizer.vocab").write_text("".join(f"{p}\t{processor.get_score(i)}\n" for i, p in enumerate(pieces)))
    (folder / "vocab.txt").write_text("".join(f"{p}\n" for p in pieces if p not in ("<unk>", "<s>", "</s>")))
    if len(pieces) != VOCAB:
        raise RuntimeError(f"the tokenizer has {len(pieces)} pieces, expected {VOCAB}")
    return pieces


def model_config(size: str, vocabulary: list[str], tokenizer: dict) -> dict:
    """NeMo's model config for EncDecCTCModelBPE from the manifest's constructor kwargs."""
    kwargs = manifest(size)["constructor_kwargs"]
    decoder = {k: v for k, v in kwargs["decoder"].items() if k != "vocabulary"}
    decoder["num_classes"] = len(vocabulary)
    return {"target": NEMO_MODEL_CLASS, "sample_rate": RATE, "tokenizer": tokenizer,
            "preprocessor": {"_target_": NEMO_CLASSES["preprocessor"], **kwargs["preprocessor"]},
            "encoder": {"_target_": NEMO_CLASSES["encoder"], **kwargs["encoder"]},
            "decoder": {"_target_": NEMO_CLASSES["decoder"], **decoder, "vocabulary": list(vocabulary)},
            # transcribe() reads validation_ds.use_start_end_token; the released configs carry these datasets
            "validation_ds": {"manifest_filepath": None, "sample_rate": RATE, "batch_size": 1, "shuffle": False,
                              "use_start_end_token": False}}


def build_weights(size: str, seed: int):
    """Our SqueezeformerCTC of the manifest's size, seeded; BatchNorm statistics and ScaleBias parameters re-drawn.
    Returns (state dict, parameter count); the keys, order and shapes are checked against the manifest."""
    import torch

    from mtp.backbones.squeezeformer import SqueezeformerCTC, kwargs_from_nemo_config

    entry = manifest(size)
    placeholder = model_config(size, [f"p{i}" for i in range(VOCAB)], {})
    kwargs, _ = kwargs_from_nemo_config(placeholder, f"{size} manifest")
    torch.manual_seed(seed)
    model = SqueezeformerCTC(**kwargs).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
            elif type(module).__name__ == "ScaleBias":
                for tensor, base in ((module.scale, 1.0), (module.bias, 0.0)):
                    tensor.copy_(base + 0.1 * torch.randn(tensor.shape, generator=generator))
    state = model.state_dict()
    expected = [(key, list(shape)) for key, shape, _ in entry["state_dict"]]
    have = [(key, list(t.shape)) for key, t in state.items()]
    if have != expected:
        wrong = [f"{e} vs {h}" for e, h in zip(expected, have) if e != h][:5]
        raise RuntimeError(f"{size}: our state dict differs from the manifest's ({len(have)} vs {len(expected)} "
                           f"entries; first differences: {wrong})")
    return state, sum(p.numel() for p in model.parameters())


def write_model(folder: Path, size: str, seed: int, pieces: list[str], tokenizer_dir: Path) -> dict:
    """The weights as a .nemo archive (for mtp) and as state dict + config JSON + tokenizer folder (for NeMo)."""
    import torch
    import yaml

    state, params = build_weights(size, seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model_weights.ckpt"
    torch.save(state, weights)
    nemo_config = model_config(size, pieces, {"dir": str(tokenizer_dir), "type": "bpe"})
    (folder / "nemo_config.json").write_text(json.dumps(nemo_config, indent=1))
    uid = hashlib.sha256(f"{size}-{seed}".encode()).hexdigest()[:32]
    members = {f"{uid}_tokenizer.model": tokenizer_dir / "tokenizer.model",
               f"{uid}_vocab.txt": tokenizer_dir / "vocab.txt",
               f"{uid}_tokenizer.vocab": tokenizer_dir / "tokenizer.vocab"}
    archive_config = model_config(size, pieces, {"dir": None, "type": "bpe",
                                                 "model_path": f"nemo:{uid}_tokenizer.model",
                                                 "vocab_path": f"nemo:{uid}_vocab.txt",
                                                 "spe_tokenizer_vocab": f"nemo:{uid}_tokenizer.vocab"})
    archive = folder / f"squeezeformer_ctc_{size}_random.nemo"
    with tarfile.open(archive, "w:") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("model_config.yaml", yaml.safe_dump(archive_config, sort_keys=False).encode())
        add("model_weights.ckpt", weights.read_bytes())
        for name, path in members.items():
            add(name, path.read_bytes())
    return {"state_dict": str(weights), "nemo_config": str(folder / "nemo_config.json"), "nemo_archive": str(archive),
            "hash": state_dict_hash(state), "params": params,
            "source": f"random (SqueezeformerCTC of the {size} manifest with torch.manual_seed({seed}), BatchNorm "
                      f"statistics and ScaleBias re-drawn with seed {seed + 1})"}


def write_audio_file(path: Path, seconds: float, seed: int) -> float:
    """FSDD test digits as one recording of at most `seconds`, 16 kHz, 16-bit PCM; returns its length in seconds."""
    import soundfile as sf

    from mtp.datasets.speech_recognition import fsdd_recording
    from mtp.files import data_dir

    wave, _ = fsdd_recording(data_dir() / "speech" / "fsdd", duration_s=seconds, sample_rate=RATE, seed=seed)
    sf.write(str(path), wave.clamp(-1, 1).numpy(), RATE, subtype="PCM_16")
    return len(wave) / RATE


def compare(nemo_npz: Path, mtp_npz: Path) -> dict:
    import numpy as np

    a, b = np.load(nemo_npz), np.load(mtp_npz)
    same_lengths = bool(np.array_equal(a["encoded_lengths"], b["encoded_lengths"]))
    same_feature_lengths = bool(np.array_equal(a["feature_lengths"], b["feature_lengths"]))
    out = {"encoded_lengths": a["encoded_lengths"].tolist(), "encoded_lengths_equal": same_lengths,
           "feature_lengths_equal": same_feature_lengths,
           "log_probs_shape": {"nemo": list(a["log_probs"].shape), "mtp": list(b["log_probs"].shape)}}
    if not same_lengths or a["log_probs"].shape != b["log_probs"].shape:
        return {**out, "equal": False}
    diffs, greedy_same, peak, feature_diffs = [], True, 0.0, []
    for i, n in enumerate(a["encoded_lengths"].tolist()):
        x, y = a["log_probs"][i, :n], b["log_probs"][i, :n]
        diffs.append(float(np.abs(x - y).max()))
        peak = max(peak, float(np.abs(x).max()))
        greedy_same &= bool(np.array_equal(a["greedy"][i, :n], b["greedy"][i, :n]))
        f = int(a["feature_lengths"][i])
        if same_feature_lengths and a["features"].shape == b["features"].shape:
            feature_diffs.append(float(np.abs(a["features"][i, :, :f] - b["features"][i, :, :f]).max()))
    finite = bool(np.isfinite(a["log_probs"]).all() and np.isfinite(b["log_probs"]).all())
    diff = max(diffs)
    return {**out, "max_abs_diff": diff, "max_abs_diff_per_utterance": diffs, "reference_peak": round(peak, 4),
            "max_abs_diff_rel": diff / peak if peak else None, "greedy_ids_equal": greedy_same,
            "features_max_abs_diff": max(feature_diffs) if feature_diffs else None,
            "equal": bool(finite and same_lengths and greedy_same and diff <= EQUAL_REL_DIFF * peak)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated NeMo sizes (fixture manifests)")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length of the timed runs")
    parser.add_argument("--clip-s", type=float, default=4.0, help="audio length of the output-equality check")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--seed", type=int, default=0, help="weights, tokenizer and audio seed")
    parser.add_argument("--repeat", type=int, default=1, help="calls per timed child; `seconds` is their median "
                        "(default 1: the one cold call a user makes)")
    parser.add_argument("--no-chunked", action="store_true", help="skip the informative mtp_chunked case")
    parser.add_argument("--forward", action="store_true", help="add the informative nemo_forward / mtp_forward "
                        "cases (the model's forward on the whole file + greedy collapse, no transcribe()/pipeline)")
    parser.add_argument("--peer-python", default=None, help="python of the NeMo environment (default: "
                        "`bash scripts/asr_peer_env.sh --python`, which builds it once)")
    parser.add_argument("--keep", default=None, help="keep the weights, audio, outputs and child logs here")
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(WORKERS[spec["case"]](spec)))
        return 0

    if args.seconds <= 0 or args.clip_s <= 0:
        parser.error("--seconds and --clip-s must be positive")
    if args.threads < 1 or args.repeat < 1:
        parser.error("--threads and --repeat: expected 1 or more")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if "MTP_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
        os.environ["MTP_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    import torch

    torch.set_num_threads(args.threads)
    for size in sizes:
        manifest(size)
    peer = peer_python(REPO / "scripts" / "asr_peer_env.sh", args.peer_python, "asr_bench")

    with tempfile.TemporaryDirectory(prefix="asr_bench_") as tmp:
        scratch = Path(args.keep) if args.keep else Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        tokenizer_dir = scratch / "tokenizer"
        pieces = train_tokenizer(tokenizer_dir, args.seed)
        clip_wav, long_wav = scratch / f"clip_{args.clip_s:g}s.wav", scratch / f"recording_{args.seconds:g}s.wav"
        clip_s = write_audio_file(clip_wav, args.clip_s, args.seed + 1)
        audio_s = write_audio_file(long_wav, args.seconds, args.seed)
        one_pass = {"chunk_s": float(int(audio_s) + 10), "context_s": 0.0, "batch_chunks": 1}

        for size in sizes:
            folder = scratch / size
            model = write_model(folder, size, args.seed, pieces, tokenizer_dir)
            base = {"bench": "asr_bench", "model": f"squeezeformer_ctc_{size}", "threads": args.threads}
            common = {"threads": args.threads, "state_dict": model["state_dict"],
                      "nemo_config": model["nemo_config"], "nemo_archive": model["nemo_archive"]}

            # 1. outputs equal first
            eq = {}
            for case, python in (("nemo_equal", peer), ("mtp_equal", sys.executable)):
                eq[case] = run_child(python, {**common, "case": case, "wav": str(clip_wav),
                                              "out_npz": str(folder / case / "out.npz")}, folder / case, args.threads)
            cmp = compare(folder / "nemo_equal" / "out.npz", folder / "mtp_equal" / "out.npz")
            weights_ok = {side: eq[f"{side}_equal"]["weights_hash"] == model["hash"] for side in ("nemo", "mtp")}
            equal = bool(cmp.pop("equal") and all(weights_ok.values()))
            print(json.dumps({**base, "case": "outputs_equal", "clip_s": round(clip_s, 3),
                              "batch": f"the clip and its first {SHORT_FRACTION:.0%} zero-padded", **cmp,
                              "equal": equal, "tolerance": {"max_abs_diff_rel": EQUAL_REL_DIFF,
                                                            "encoded_lengths": "identical",
                                                            "greedy_ids": "identical"},
                              "num_classes": {"nemo": eq["nemo_equal"]["num_classes"],
                                              "mtp": eq["mtp_equal"]["num_classes"]},
                              "weights": model["source"], "params": model["params"],
                              "weights_loaded_identically": weights_ok, "mtp_backbone": eq["mtp_equal"]["backbone"],
                              "path": "end to end from the waveform: NeMo model.forward(input_signal, "
                                      "input_signal_length) vs mtp model.transcribe_logits(waves, lengths)",
                              "versions": {"nemo": eq["nemo_equal"]["versions"],
                                           "mtp": eq["mtp_equal"]["versions"]}}), flush=True)

            # 2. timing
            lines = {}
            cases = [("nemo", peer, {}), ("mtp", sys.executable, {"options": one_pass})]
            if not args.no_chunked:
                cases.append(("mtp_chunked", sys.executable, {"options": {}}))
            if args.forward:
                cases += [("nemo_forward", peer, {}), ("mtp_forward", sys.executable, {})]
            for case, python, extra in cases:
                r = run_child(python, {**common, **extra, "case": case, "wav": str(long_wav), "repeat": args.repeat,
                                       "out_txt": str(folder / case / "text.txt")}, folder / case, args.threads)
                calls_s, seconds = r["seconds"], statistics.median(r["seconds"])
                how = {"nemo": "NeMo model.transcribe([wav], batch_size=1): one forward over the whole file",
                       "mtp": "mtp pipe(wav) with chunk_s above the length: one forward over the whole file",
                       "mtp_chunked": "mtp pipe(wav), the pipeline's default chunking (informative)",
                       "nemo_forward": "NeMo model.forward on the whole file + greedy collapse + its tokenizer "
                                       "(informative: no transcribe())",
                       "mtp_forward": "mtp model.transcribe_logits on the whole file + greedy collapse + the "
                                      "pipeline's tokenizer (informative: no pipeline call)"}[case]
                impl = "NVIDIA NeMo (nemo-toolkit)" if case.startswith("nemo") else "mtp"
                line = {**base, "case": case, "impl": impl,
                        "how": how, "audio_s": round(audio_s, 3), "seconds": round(seconds, 3),
                        "seconds_per_call": [round(x, 3) for x in calls_s],
                        "real_time_factor": round(seconds / audio_s, 4), "load_s": round(r["load_s"], 2),
                        "rss_loaded_mib": r["rss_loaded_mib"], "peak_rss_mib": r["peak_rss_mib"],
                        "total_s": r["total_s"], "cpu_s": r["cpu_s"], "model_calls": r["model_calls"],
                        "encoder_frames": r["encoder_frames"], "text_words": r["text_words"],
                        "outputs_equal": equal, "weights": model["source"], "loadavg_before": r["loadavg_before"],
                        "loadavg_after": r["loadavg_after"], "versions": r["versions"]}
                line["batch_per_call"] = r["batch"]
                if "options" in r:
                    line["options"] = r["options"]
                lines[case] = line
                print(json.dumps(line), flush=True)

            texts = {case: (folder / case / "text.txt").read_text().split() for case in lines}
            theirs, mine = lines["nemo"], lines["mtp"]
            speedup = round(theirs["seconds"] / mine["seconds"], 3)
            rss_ratio = round(mine["peak_rss_mib"] / theirs["peak_rss_mib"], 3)
            out = {**base, "case": "speedup", "impl": "nemo / mtp", "audio_s": round(audio_s, 3),
                   "speedup": speedup if equal else None, "rss_ratio": rss_ratio if equal else None,
                   "seconds": [mine["seconds"], theirs["seconds"]],
                   "peak_rss_mib": [mine["peak_rss_mib"], theirs["peak_rss_mib"]],
                   "real_time_factor": [mine["real_time_factor"], theirs["real_time_factor"]],
                   "outputs_equal": equal, "long_text_equal": texts["mtp"] == texts["nemo"], "goal": GOAL,
                   "meets_goal": bool(equal and speedup >= GOAL), "weights": model["source"],
                   "loadavg_before": theirs["loadavg_before"], "loadavg_after": mine["loadavg_after"]}
            if "mtp_chunked" in lines:
                out["chunked_text_equal_to_nemo"] = texts["mtp_chunked"] == texts["nemo"]
            if args.forward:
                out["forward_seconds"] = [lines["mtp_forward"]["seconds"], lines["nemo_forward"]["seconds"]]
                out["forward_speedup"] = round(lines["nemo_forward"]["seconds"] / lines["mtp_forward"]["seconds"], 3) \
                    if equal else None
                out["forward_texts_equal"] = texts["mtp_forward"] == texts["nemo_forward"] == texts["nemo"]
            if not equal:
                out["refused"] = "the outputs differ beyond float32 noise (see the outputs_equal line): no speed-up " \
                                 "claimed"
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
