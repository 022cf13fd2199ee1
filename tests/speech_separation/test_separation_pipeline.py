"""Speech separation pipeline: long audio keeps each speaker on one output, the metrics follow their
definitions, official MossFormer2 checkpoints load through the pipeline, and files of any rate and channel
count come back at their own rate and length, one file per speaker, with broken files reported."""
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mtp.pipeline import InputError
from mtp.pipelines.speech_separation.long_audio import (best_permutation, match_loudness, segment_starts,
                                                       separate_long)
from mtp.pipelines.speech_separation.metrics import SeparationMetrics, separation_scores
from mtp.pipelines.speech_separation.pipeline import SpeechSeparationPipeline

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL_TASNET = dict(enc_num_feats=32, msk_num_feats=16, msk_num_hidden_feats=32, msk_num_layers=2, msk_num_stacks=1)


def two_sources(length, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 8000
    a = torch.sin(2 * np.pi * 220 * t) * (1 + 0.5 * torch.sin(2 * np.pi * 0.7 * t))
    b = torch.sign(torch.sin(2 * np.pi * 330 * t)) * 0.5 + 0.05 * torch.randn(length, generator=g)
    return torch.stack([a, b])


def test_segments_are_aligned_so_each_speaker_stays_on_one_output():
    sources = two_sources(8000 * 12)
    mixture = sources.sum(0)
    g = torch.Generator().manual_seed(3)
    starts = iter(segment_starts(mixture.shape[0], 8000 * 2, 8000 * 2 - 4000))  # the order separate_long uses
    calls = []

    def oracle_in_random_order(segments):  # the true sources of each segment, speakers in a random order
        out = []
        for seg in segments:
            start = next(starts)
            assert torch.equal(mixture[start:start + seg.shape[0]], seg)
            calls.append(start)
            out.append(sources[:, start:start + seg.shape[0]][torch.randperm(2, generator=g)])
        return torch.stack(out)

    estimate = separate_long(oracle_in_random_order, mixture, 2, segment=8000 * 2, overlap=4000, batch_segments=3)
    if torch.dot(estimate[0], sources[0]) < torch.dot(estimate[0], sources[1]):
        estimate = estimate.flip(0)  # one global order is free
    torch.testing.assert_close(estimate, sources, atol=1e-5, rtol=0)
    assert len(calls) >= 6  # it really ran in segments


def test_best_permutation_and_metrics_follow_their_definitions():
    sources = two_sources(16000)
    assert best_permutation(sources, sources.flip(0)) == (1, 0)
    scores = separation_scores(sources.flip(0) * 3.0, sources, sources.sum(0))
    assert scores["si_snr"] > 100  # perfect up to scale and order
    mixture_scores = separation_scores(sources.sum(0).expand(2, -1).clone(), sources, sources.sum(0))
    assert abs(mixture_scores["si_snri"]) < 1e-6 and abs(mixture_scores["sdri"]) < 1e-4
    noisy = sources + 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    metric = SeparationMetrics()
    metric.update(noisy.flip(0)[None], {"sources": sources[None], "mixture": sources.sum(0)[None],
                                        "lengths": torch.tensor([16000])})
    result = metric.compute()
    signal = sources.pow(2).sum(1) / 16000
    expected = float((10 * torch.log10(signal / 0.01)).mean())  # SI-SNR of white noise at std 0.1 (about)
    assert abs(result["si_snr"] - expected) < 0.5 and result["si_snri"] > 10


def test_official_mossformer2_checkpoint_loads_and_matches(tmp_path, fixtures_dir):
    from safetensors.torch import load_file

    folder = fixtures_dir / "mossformer2"
    sidecar = json.loads((folder / "mossformer2_tiny.json").read_text())
    state = load_file(str(folder / "mossformer2_tiny_state_dict.safetensors"))
    io = load_file(str(folder / "mossformer2_tiny_io.safetensors"))
    path = tmp_path / "last_best_checkpoint.pt"  # ClearerVoice's layout: {'model': ..., 'optimizer': ...}, module.
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}, path)
    pipe = SpeechSeparationPipeline(backbone="mossformer2", weights=str(path), device="cpu",
                                    backbone_kwargs=sidecar["constructor_kwargs"], rescale=False)
    assert pipe.config["sample_rate"] == 16000 and pipe.config["num_speakers"] == 2
    out = pipe.separate_array(io["input"][0].numpy(), 16000)
    torch.testing.assert_close(out, io["output"][:, 0], atol=1e-5, rtol=0)


def test_files_of_any_rate_and_channels_come_back_as_they_came(tmp_path, caplog):
    pipe = SpeechSeparationPipeline(backbone="conv_tasnet", backbone_kwargs=SMALL_TASNET, pretrained=False,
                                    device="cpu", segment_s=1.0, overlap_s=0.25)
    inputs = tmp_path / "in"
    inputs.mkdir()
    sources = two_sources(44100 * 3)
    stereo = torch.stack([sources[0] + 0.8 * sources[1], 0.7 * sources[0] + sources[1]]) * 0.3
    sf.write(inputs / "meeting.wav", stereo.T.numpy(), 44100)
    sf.write(inputs / "phone.flac", (sources.sum(0)[:16000] * 0.3).numpy(), 8000)
    sf.write(inputs / "silence.wav", np.zeros(8000, dtype=np.float32), 16000)
    (inputs / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not really")
    with_nan = sources.sum(0)[:8000].clone() * 0.3
    with_nan[100:103] = float("nan")
    sf.write(inputs / "nan.wav", with_nan.numpy(), 8000, subtype="FLOAT")
    sf.write(inputs / "loud.wav", (sources.sum(0)[:16000] * 3).clamp(-1, 1).numpy(), 16000)  # clipped
    with caplog.at_level(logging.WARNING, logger="mtp.speech_separation"):
        report = pipe(str(inputs), output=str(tmp_path / "out"))
    failed = sorted(f.input.rsplit("/", 1)[-1] for f in report.failures)
    assert failed == ["broken.wav", "nan.wav", "silence.wav"] and report.items_written == 3
    assert "silent" in next(f.error for f in report.failures if f.input.endswith("silence.wav"))
    assert "NaN/Inf) at frame 100" in next(f.error for f in report.failures if f.input.endswith("nan.wav"))
    assert any("loud.wav" in r.getMessage() and "clipped" in r.getMessage() for r in caplog.records)
    assert sf.info(tmp_path / "out" / "loud_s1.wav").frames == 16000
    for name, rate, frames in (("meeting", 44100, 44100 * 3), ("phone", 8000, 16000)):
        for k in (1, 2):
            info = sf.info(tmp_path / "out" / f"{name}_s{k}.wav")
            assert (info.samplerate, info.frames, info.channels) == (rate, frames, 1)
    with pipe.options_for_call({"stereo": "per_channel"}):
        out = pipe.separate_array(stereo.numpy(), 44100)
    assert out.shape == (2, 2, 44100 * 3)
    with pytest.raises(InputError, match="800 NaN or infinite samples of 800"):
        pipe.separate_array(np.full(800, np.nan), 8000)


def test_recipe_trains_on_fsdd_mixtures_and_evaluates_the_list(tmp_path, data_dir):
    """The recipe flow end to end on real FSDD: on-the-fly training mixtures, the shared list for val/test."""
    import pandas as pd

    from mtp.config import load_recipe
    from mtp.engine import run

    lists = data_dir / "speech" / "separation"
    (tmp_path / "fsdd").symlink_to(data_dir / "speech" / "fsdd")  # the shared layout: lists in separation/
    (tmp_path / "separation").mkdir()
    for split in ("val", "test"):
        pd.read_csv(lists / f"mixtures_{split}.csv").head(6).to_csv(tmp_path / "separation" / f"{split}.csv",
                                                                     index=False)
    recipe = load_recipe(
        Path(__file__).resolve().parents[2] / "recipes" / "speech_separation" / "conv_tasnet_fsdd.yaml",
        [f"data.root={data_dir / 'speech' / 'fsdd'}", f"output.dir={tmp_path}", "train.threads=1", "train.epochs=1",
         "data.kwargs.mixtures_per_epoch=8", "train.batch_size=4",
         f"data.splits.val.kwargs.mixtures_csv={tmp_path / 'separation' / 'val.csv'}",
         f"data.splits.test.kwargs.mixtures_csv={tmp_path / 'separation' / 'test.csv'}",
         *[f"backbone.kwargs.{k}={v}" for k, v in SMALL_TASNET.items()]])
    result = run(recipe, progress=False)
    metrics = result["metrics"]
    assert metrics["samples"] == 6 and {"si_snr", "si_snri", "sdr", "sdri"} <= set(metrics)
    run_dir = tmp_path / recipe.output.name
    pipe = SpeechSeparationPipeline(weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.config["sample_rate"] == 8000 and pipe.backbone_name == "conv_tasnet"
    again = pipe.evaluate(str(tmp_path / "separation" / "test.csv"))
    assert abs(again["si_snri"] - metrics["si_snri"]) < 1e-3


def test_an_array_without_a_rate_is_refused_by_name():
    pipe = SpeechSeparationPipeline(backbone="conv_tasnet", backbone_kwargs=SMALL_TASNET, pretrained=False,
                                    device="cpu")
    with pytest.raises(InputError, match=r"<ndarray of shape \(100,\)>: .*use separate_array\(array, sample_rate\)"):
        pipe(np.zeros(100))


def test_loudness_matching_keeps_an_absent_speaker_quiet():
    mixture = two_sources(8000)[0] * 0.1
    estimates = torch.stack([mixture * 0.5, mixture * 1e-3])  # one speaker only: the other output is residue
    out = match_loudness(estimates, mixture)
    rms = out.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms[0], mixture.pow(2).mean().sqrt())  # the speaker: at the mixture's level
    assert rms[1] / rms[0] < 10 ** (-50 / 20)  # the residue keeps its 54 dB distance, not raised to speech level
    both = match_loudness(torch.stack([mixture * 0.5, mixture * 0.05]), mixture)  # two speakers 20 dB apart
    torch.testing.assert_close(both.pow(2).mean(-1).sqrt(), mixture.pow(2).mean().sqrt().expand(2))  # ClearerVoice


def test_sdr_is_computed_whatever_the_thread_count(data_dir):
    """torchmetrics' SDR solves a batched float64 system that MKL got wrong with two threads on this machine's
    CPU (an error for every item); the metric must give the one-thread figures with any thread count."""
    from mtp.datasets.speech_separation import MixtureList

    items = MixtureList(data_dir / "speech" / "separation" / "mixtures_test.csv",
                        data_dir / "speech" / "fsdd" / "recordings", 8000)
    before = torch.get_num_threads()
    scores = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            scores[threads] = [separation_scores(items[i]["sources"].flip(0) * 0.5 + items[i]["sources"] * 0.5,
                                                 items[i]["sources"], items[i]["mixture"]) for i in range(3)]
        finally:
            torch.set_num_threads(before)
    for one, two in zip(scores[1], scores[2]):
        assert math.isfinite(two["sdri"]) and abs(one["sdri"] - two["sdri"]) < 1e-6


def test_segments_per_forward_default_to_one_on_the_cpu():
    pipe = SpeechSeparationPipeline(backbone="conv_tasnet", backbone_kwargs=SMALL_TASNET, pretrained=False,
                                    device="cpu", segment_s=0.5, overlap_s=0.1)
    assert pipe.batch_segments == 1
    calls = []
    separate = pipe.separate
    pipe.separate = lambda batch: calls.append(batch.shape[0]) or separate(batch)
    pipe.separate_any_length(two_sources(8000 * 2).sum(0))
    assert calls and set(calls) == {1}
    chosen = SpeechSeparationPipeline(backbone="conv_tasnet", backbone_kwargs=SMALL_TASNET, pretrained=False,
                                      device="cpu", batch_segments=3)
    assert chosen.batch_segments == 3
    with pytest.raises(Exception, match="batch_segments=0"):
        SpeechSeparationPipeline(backbone="conv_tasnet", backbone_kwargs=SMALL_TASNET, pretrained=False,
                                 device="cpu", batch_segments=0)


def test_the_loss_is_computed_in_float32_under_bf16_autocast():
    """bf16 autocast (train.precision: bf16-mixed) runs the network in bfloat16; the SI-SNR loss and validation
    metrics must still be float32 and close to the float32 figures (bf16's 8-bit mantissa would blur them)."""
    torch.manual_seed(0)
    pipe = SpeechSeparationPipeline(backbone="conv_tasnet", backbone_kwargs=SMALL_TASNET, pretrained=False,
                                    device="cpu", sample_rate=8000)
    sources = torch.stack([two_sources(4000, seed=s) for s in range(2)]).float()
    batch = {"mixture": sources.sum(1), "sources": sources, "lengths": torch.tensor([4000, 3000])}
    reference = pipe.training_loss(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pipe.training_loss(batch)
        metrics = pipe.validation_metrics(batch)
    assert loss.dtype == torch.float32 and metrics["val_si_snri"].dtype == torch.float32
    assert abs(float(loss) - float(reference)) < 0.05 * abs(float(reference)) + 0.05
