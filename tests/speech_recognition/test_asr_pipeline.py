"""Speech recognition pipeline: long-audio merging (frame bookkeeping checked model-free on real FSDD audio), VAD,
files of any rate/channels/container through a .nemo model, folder runs past broken files, atomic outputs, and a
tiny train + evaluate run through the recipe flow."""
import io
import json
import tarfile
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from mtp import Pipeline
from mtp.datasets.audio import read_audio
from mtp.datasets.speech_recognition import fsdd_digit_strings
from mtp.pipeline import InputError, OptionError
from mtp.pipelines.speech_recognition.long_audio import chunk_windows, chunked_alignment, energy_segments

pytestmark = pytest.mark.usefixtures("one_thread")
STRIDE = 640   # the released front end: 160-sample hop x 4 subsampling


@pytest.fixture(scope="module")
def digit_string(data_dir):
    """A real FSDD digit string at 16 kHz (several seconds)."""
    strings = fsdd_digit_strings(data_dir / "speech" / "fsdd", split="test", sample_rate=16000, num_items=40)
    item = max((strings[i] for i in range(40)), key=lambda x: x["audio"].shape[0])
    assert item["audio"].shape[0] > 3 * 16000
    return item["audio"]


def local_model(width: int, classes: int = 9):
    """A stand-in for a CTC model whose frame j depends on the audio of frames j-width..j+width of its input
    window only (zero beyond the window), as a convolutional receptive field would. The class is the frame's
    quantised log energy (the last class, the blank, for near silence)."""
    def logits(waves, lengths):
        frames = int(lengths.max()) // STRIDE
        out = torch.full((waves.shape[0], frames, classes), -30.0)
        counts = []
        for i, n in enumerate(lengths.tolist()):
            count = n // STRIDE
            energy = waves[i, : count * STRIDE].reshape(count, STRIDE).double().pow(2).sum(-1)
            padded = torch.nn.functional.pad(energy, (width, width))
            local = torch.stack([padded[k:k + count] for k in range(2 * width + 1)]).sum(0)
            level = torch.log10(local + 1e-9)
            token = torch.where(level < -2, classes - 1, ((level + 2) * 2).clamp(0, classes - 2).long())
            out[i, torch.arange(count), token] = 0.0
            counts.append(count)
        return out, torch.tensor(counts)
    return logits


# ---------------------------------------------------------------------------------------------- long audio
@pytest.mark.parametrize("length", [16000 * 3, 16000 * 3 + 1, 16000 * 3 + 639, 7 * 640 * 5])
def test_kept_frames_tile_the_file_exactly(length):
    """Frame bookkeeping: a model that outputs each frame's absolute index (read off a ramp) must come back as
    0, 1, 2, ... whatever the length and chunking."""
    def index_model(waves, lengths):
        count = int(lengths.max()) // STRIDE
        first = waves[:, : count * STRIDE: STRIDE]          # the ramp's value at each frame's first sample
        return first[..., None], torch.div(lengths, STRIDE, rounding_mode="floor")

    ramp = torch.arange(length, dtype=torch.float64) / STRIDE
    merged = chunked_alignment(index_model, ramp, STRIDE, chunk=5 * STRIDE, context=2 * STRIDE, batch_chunks=3,
                               keep_log_probs=True)
    assert torch.equal(merged[:, 0], torch.arange(length // STRIDE, dtype=torch.float64))


def test_chunk_windows_are_checked():
    with pytest.raises(ValueError, match="multiples of the frame stride"):
        chunk_windows(10000, 1000, 640, 640)
    assert chunk_windows(1000, 640, 0, 640) == [(0, 640, 0, 1), (640, 1000, 0, None)]


def test_chunked_alignment_equals_one_pass_on_a_real_digit_string(digit_string):
    width = 2                                                  # frames of receptive field on each side
    model = local_model(width)
    one_pass = model(digit_string[None], torch.tensor([digit_string.shape[0]]))[0][0].argmax(-1)
    merged = chunked_alignment(model, digit_string, STRIDE, chunk=8 * STRIDE, context=width * STRIDE, batch_chunks=2)
    assert len(set(one_pass.tolist())) > 3                     # speech and pauses: a real alignment
    assert torch.equal(merged, one_pass)
    # without context, frames at the chunk edges lose their neighbours: that is what the context is for
    cut = chunked_alignment(model, digit_string, STRIDE, chunk=8 * STRIDE, context=0, batch_chunks=2)
    assert cut.shape == one_pass.shape and not torch.equal(cut, one_pass)


def test_energy_vad_finds_the_words(data_dir):
    rate = 16000
    clips = [read_audio(data_dir / "speech" / "fsdd" / "recordings" / f"{d}_jackson_0.wav", rate)[0] for d in (3, 7, 1)]
    silence = torch.zeros(rate)
    wave = torch.cat([silence, clips[0], silence, clips[1], silence, clips[2], silence])
    segments = energy_segments(wave, rate, threshold_db=40.0, min_silence_s=0.5, pad_s=0.1)
    starts = np.cumsum([rate, clips[0].shape[0] + rate, clips[1].shape[0] + rate])
    assert len(segments) == 3
    for (start, end), true_start, clip in zip(segments, starts, clips):
        assert true_start - 0.15 * rate <= start <= true_start + 0.1 * rate   # FSDD clips begin near their speech
        assert end <= true_start + clip.shape[0] + 0.15 * rate
    assert energy_segments(torch.zeros(rate), rate) == []


# ---------------------------------------------------------------------------------------------- pipeline on files
@pytest.fixture
def tiny_nemo(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    return fixtures_dir / "squeezeformer" / "squeezeformer_tiny_official_layout.nemo"


def test_nemo_archive_any_rate_stereo_mp3_and_arrays(tiny_nemo, data_dir, tmp_path):
    pipe = Pipeline("speech_recognition", weights=str(tiny_nemo), device="cpu")
    assert pipe.model.num_classes == 16 and pipe.tokenizer.kind == "pieces" and pipe.sample_rate == 16000
    jfk = data_dir / "speech" / "whisper_sample" / "jfk.flac"          # 44.1 kHz stereo, 11 s
    result = pipe(jfk)
    assert result["duration"] == pytest.approx(11.0, abs=0.01) and result["text"]
    stereo, rate = sf.read(jfk, dtype="float32", always_2d=True)
    assert rate == 44100 and stereo.shape[1] == 2
    assert pipe.transcribe_array(stereo.T, rate)["text"] == result["text"]   # downmix + resample, same path
    assert pipe((torch.from_numpy(stereo.T.copy()), rate))["text"] == result["text"]
    assert pipe(stereo.T.mean(0), input_rate=rate)["text"] == result["text"]
    with pytest.raises(InputError, match="needs its sample rate"):
        pipe(stereo.T.mean(0))
    mp3 = pipe(data_dir / "speech" / "lhotse_samples" / "common_voice_en_651325.mp3")
    assert mp3["duration"] > 1.0
    # the word timings cover the decoded text and lie inside the file
    assert all(0 <= w["start"] < w["end"] <= result["duration"] + 0.04 for w in result["words"])
    assert " ".join(w["word"] for w in result["words"]) == result["text"]
    # long-audio settings run the same file in chunks; VAD on it too
    chunked = pipe(jfk, chunk_s=2.0, context_s=1.0)
    assert chunked["duration"] == result["duration"] and chunked["text"]
    assert pipe(jfk, vad=True)["words"][0]["start"] >= 0.0
    with pytest.raises(OptionError, match="decoder='beam'"):
        pipe(jfk, lexicon="words.txt")


def test_folder_run_writes_atomically_goes_on_past_broken_files(tiny_nemo, data_dir, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = data_dir / "speech" / "fsdd" / "recordings" / "4_theo_2.wav"
    (folder / "a.wav").write_bytes(good.read_bytes())
    quiet = read_audio(good)[0].numpy()
    sf.write(folder / "sub" / "loud.flac", np.clip(quiet / np.abs(quiet).max() * 4, -1, 1), 8000)   # clipped
    (folder / "broken.wav").write_bytes(good.read_bytes()[:1000])   # truncated
    (folder / "empty.mp3").write_bytes(b"")
    sf.write(folder / "silence.wav", np.zeros(8000, dtype=np.float32), 8000)
    (folder / "notes.txt").write_text("not audio")
    pipe = Pipeline("speech_recognition", weights=str(tiny_nemo), device="cpu")
    report = pipe(folder, output=tmp_path / "out")
    assert not report.ok and report.items_written == 3
    failed = {f.input.split("/")[-1]: f.error for f in report.failures}
    assert set(failed) == {"broken.wav", "empty.mp3"}
    assert "truncated" in failed["broken.wav"] and "empty file" in failed["empty.mp3"]
    out = tmp_path / "out"
    for stem in ("a", "sub/loud", "silence"):
        for suffix in ("txt", "json", "srt", "vtt"):
            assert (out / f"{stem}.{suffix}").is_file()
    assert (out / "silence.txt").read_text() == "\n" and (out / "silence.vtt").read_text() == "WEBVTT\n\n"
    loud = json.loads((out / "sub" / "loud.json").read_text())
    assert loud["clipped_fraction"] > 0.01 and loud["name"].endswith("loud.flac")
    assert not [p for p in out.rglob("*") if ".part" in p.name]
    assert json.loads((out / "failures.json").read_text())["items_written"] == 3
    again = pipe(folder, output=out)                    # done items are skipped, never overwritten
    assert again.items_written == 0 and len(again.skipped_existing) == 3
    only_text = pipe(folder, output=tmp_path / "text_only", formats=["txt"])
    assert sorted(p.name for p in (tmp_path / "text_only").glob("*.*") if not p.name.startswith(".")) == \
        ["a.txt", "failures.json", "silence.txt"]


def test_nemo_archive_with_sentencepiece_decodes_with_it(fixtures_dir, tmp_path, monkeypatch):
    import sentencepiece as spm
    import yaml

    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["one two three four five"] * 20),
                                   model_writer=model, vocab_size=16, model_type="bpe", minloglevel=2)
    with tarfile.open(fixtures_dir / "squeezeformer" / "squeezeformer_tiny_official_layout.nemo") as source:
        members = {m.name: source.extractfile(m).read() for m in source.getmembers() if m.isfile()}
    config = yaml.safe_load(members["./model_config.yaml"])
    config["tokenizer"] = {"type": "bpe", "model_path": "nemo:ab12_tokenizer.model"}
    members["./model_config.yaml"] = yaml.safe_dump(config).encode()
    members["./ab12_tokenizer.model"] = model.getvalue()
    archive = tmp_path / "sp.nemo"
    with tarfile.open(archive, "w:") as out:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    pipe = Pipeline("speech_recognition", weights=str(archive), device="cpu")
    assert pipe.tokenizer.kind == "sentencepiece" and len(pipe.tokenizer) == 16
    wave = read_audio(fixtures_dir.parent / "data" / "speech" / "fsdd" / "recordings" / "1_lucas_0.wav", 16000)[0]
    hyp = pipe.transcribe_array(wave, 16000)
    frames = pipe.model.transcribe_logits(wave[None])[0][0].argmax(-1)
    from mtp.pipelines.speech_recognition.decoding import collapse

    assert hyp["text"] == pipe.tokenizer.decode(collapse(frames, pipe.model.blank_index).ids)


# ---------------------------------------------------------------------------------------------- recipe flow
def test_tiny_train_and_evaluate_through_the_recipe(tmp_path, data_dir, monkeypatch):
    from mtp.config import load_recipe
    from mtp.engine import run

    monkeypatch.setenv("MTP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    recipe = load_recipe("squeezeformer_fsdd", [
        "backbone.kwargs={d_model: 32, n_layers: 2, n_heads: 2, conv_kernel_size: 7, time_reduce_idx: null}",
        "train.max_steps=3", "train.batch_size=8", "train.threads=1", "train.scheduler=none",
        f"output.dir={tmp_path}", "output.name=tiny", "eval.batch_size=64", "options.long_test_s=30",
        "options.tokenizer_vocab_size=64", "options.tokenizer_type=bpe"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(recipe, progress=False)
    metrics = result["metrics"]
    assert metrics["samples"] == 300 and metrics["reference_words"] == 300
    assert 0.0 <= metrics["wer"] and "digit_accuracy" in metrics and "cer" in metrics
    run_dir = tmp_path / "tiny"
    strings = json.loads((run_dir / "digit_strings_metrics.json").read_text())
    assert strings["samples"] == 300 and strings["reference_words"] > 600
    long = json.loads((run_dir / "long_recording_metrics.json").read_text())
    assert 29.0 < long["audio_seconds"] <= 30.0 and long["reference_words"] > 40 and long["real_time_factor"] > 0
    sample = json.loads((run_dir / "transcripts_sample.json").read_text())
    assert len(sample) == 20 and {"reference", "hypothesis"} <= set(sample[0])
    # the recipe trained its SentencePiece tokeniser first (BPE: every digit word one piece); the exported model
    # carries it, so it rebuilds and transcribes with the cached .model file gone
    (model_file,) = (tmp_path / "cache" / "tokenizers").glob("sentencepiece-*.model")
    model_file.unlink()
    pipe = Pipeline("speech_recognition", weights=str(run_dir / "model.safetensors"), device="cpu")
    assert pipe.tokenizer.kind == "sentencepiece" and len(pipe.tokenizer) == 64 and not pipe.untrained
    assert pipe.model.num_classes == 64 and pipe.tokenizer.encode("seven three") == [
        pipe.tokenizer.vocabulary.index("\u2581seven"), pipe.tokenizer.vocabulary.index("\u2581three")]
    assert pipe.model.encoder.d_model == 32
    assert isinstance(pipe(data_dir / "speech" / "fsdd" / "recordings" / "0_george_0.wav")["text"], str)
    again = pipe.evaluate(data_dir / "speech" / "fsdd" / "recordings", batch_size=64)
    assert again["wer"] == metrics["wer"] and again["samples"] == 300


# ---------------------------------------------------------------------------------------------- training pieces
def _fsdd_batch(data_dir, count=8):
    from mtp.datasets.speech_recognition import fsdd_digits

    data = fsdd_digits(data_dir / "speech" / "fsdd", split="train", takes="10")
    return data.collate([data[i * 7] for i in range(count)])


@pytest.mark.parametrize("backbone, kwargs", [
    ("squeezeformer_ctc_xsmall", dict(d_model=32, n_layers=2, n_heads=2, conv_kernel_size=7, time_reduce_idx=None)),
    ("conformer_ctc", dict(d_model=32, n_layers=2, n_heads=2, conv_kernel_size=7)),
])
def test_ctc_training_learns_a_batch(data_dir, backbone, kwargs):
    torch.manual_seed(0)
    pipe = Pipeline("speech_recognition", backbone=backbone, backbone_kwargs=kwargs, device="cpu", pretrained=False)
    assert pipe.frame_stride == STRIDE and pipe.model.blank_index == 28
    batch = _fsdd_batch(data_dir)
    pipe.model.train()
    optimizer = torch.optim.AdamW(pipe.model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        optimizer.zero_grad()
        loss = pipe.training_loss(batch)
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    pipe.model.eval()
    with torch.no_grad():
        after = float(pipe.validation_metrics(batch)["val_loss"])
    assert torch.isfinite(loss) and after < 0.7 * first


def test_spec_augment_masks_valid_frames_only_and_only_in_training(data_dir):
    pipe = Pipeline("speech_recognition", backbone_kwargs=dict(d_model=32, n_layers=2, n_heads=2, time_reduce_idx=None),
                    device="cpu", pretrained=False, spec_time_width=0.2, spec_time_masks=2)
    features = torch.randn(3, 80, 50) + 5.0
    lengths = torch.tensor([50, 30, 12])
    features[1, :, 30:] = 0.0
    features[2, :, 12:] = 0.0
    torch.manual_seed(1)
    masked = pipe.spec_augment(features, lengths)
    assert torch.equal(masked[1, :, 30:], features[1, :, 30:]) and torch.equal(masked[2, :, 12:], features[2, :, 12:])
    for i, n in enumerate(lengths.tolist()):
        zero_bins = (masked[i, :, :n] == 0).all(dim=1).sum()
        zero_frames = (masked[i, :, :n] == 0).all(dim=0).sum()
        assert 0 < zero_bins <= 2 * 27 and zero_frames <= 2 * int(0.2 * n)
    batch = _fsdd_batch(data_dir, 2)
    pipe.model.eval()
    with torch.no_grad():   # validation: no masks, no dither: deterministic
        assert float(pipe.validation_metrics(batch)["val_loss"]) == float(pipe.validation_metrics(batch)["val_loss"])


def test_num_classes_must_fit_the_vocabulary():
    with pytest.raises(OptionError, match="num_classes=128 but the char vocabulary has 28"):
        Pipeline("speech_recognition", backbone_kwargs=dict(num_classes=128, d_model=32, n_layers=2, n_heads=2,
                                                            time_reduce_idx=None), device="cpu", pretrained=False)


def test_evaluation_data_by_layout_and_name(tiny_nemo, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_DATA_DIR", str(data_dir))
    pipe = Pipeline("speech_recognition", weights=str(tiny_nemo), device="cpu")
    libri = pipe.evaluate(data_dir / "speech" / "librispeech_samples")
    assert libri["samples"] == 4 and libri["reference_words"] == 28 + 8 + 5 + 17 and "digit_accuracy" not in libri
    flac = sorted((data_dir / "speech" / "librispeech_samples").rglob("*.flac"))[0]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"audio_filepath": str(flac), "duration": 10.0, "text": "x"}) + "\n")
    assert pipe.evaluate(manifest)["samples"] == 1
    assert pipe.evaluate("fsdd_digit_strings", limit=4)["samples"] == 4
    with pytest.raises(InputError, match="expected a LibriSpeech folder"):
        pipe.evaluate(tmp_path)


def test_beam_search_with_a_lexicon_in_the_pipeline(data_dir, tmp_path):
    torch.manual_seed(0)
    pipe = Pipeline("speech_recognition", backbone_kwargs=dict(d_model=32, n_layers=2, n_heads=2,
                                                               time_reduce_idx=None), device="cpu", pretrained=False)
    words = tmp_path / "digits.txt"
    words.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    clip = data_dir / "speech" / "fsdd" / "recordings" / "5_yweweler_1.wav"
    result = pipe(clip, decoder="beam", lexicon=str(words), beam_size=8, word_score=2.0)
    assert result["words"] and {w["word"] for w in result["words"]} <= set(words.read_text().split())
    assert result["text"] == " ".join(w["word"] for w in result["words"])


def test_very_short_and_silent_arrays():
    torch.manual_seed(0)
    pipe = Pipeline("speech_recognition", backbone_kwargs=dict(d_model=32, n_layers=2, n_heads=2,
                                                               time_reduce_idx=None), device="cpu", pretrained=False)
    for samples in (1, 100, 700):            # shorter than two output frames: zero-padded, timings clipped
        result = pipe.transcribe_array(torch.randn(samples) * 0.1, 16000)
        assert all(0 <= w["start"] <= w["end"] <= result["duration"] for w in result["words"])
    assert pipe.transcribe_array(torch.zeros(8000), 8000)["text"] == ""
    with pytest.raises(InputError, match="NaN"):
        pipe.transcribe_array(torch.tensor([0.1, float("nan")] * 100), 16000)
    with pytest.raises(InputError, match="more channels than samples"):
        pipe.transcribe_array(torch.zeros(1000, 2), 16000)
