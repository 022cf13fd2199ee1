"""Speech recognition data: every layout read from files in that layout (real samples where they exist), the FSDD
digit sets, and bad input named by file and line."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mtp.datasets import audio as audio_io
from mtp.datasets import speech_separation
from mtp.datasets.speech_recognition import (DIGIT_WORDS, ASRDataset, FSDDDigitStrings, TranscriptError, change_tempo,
                                             fsdd_digit_strings, fsdd_digits, kaldi, kaldi_utterances, librispeech, nemo_manifest,
                                             nemo_manifest_utterances, parse_takes, speechbrain_csv,
                                             speechbrain_utterances)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fsdd(data_dir):
    return data_dir / "speech" / "fsdd" / "recordings"


@pytest.fixture(scope="module")
def libri(data_dir):
    return data_dir / "speech" / "librispeech_samples" / "LibriSpeech"


def _wav(path, seconds=0.2, rate=8000, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([tone] * channels, 1) if channels > 1 else tone, rate)
    return path


def test_audio_io_moved_and_still_importable_from_separation():
    for name in ("AudioFileError", "read_audio", "resample", "write_audio", "_check_wav_complete"):
        assert getattr(speech_separation, name) is getattr(audio_io, name)


# ---------------------------------------------------------------------------------------------- real layouts
def test_librispeech_sample_folder(libri):
    data = librispeech(libri, split="test")          # the subset test-clean is found under the corpus folder
    assert len(data) == 4 and data.sample_rate == 16000
    ids = [u.id for u in data.utterances]
    assert ids == ["1089-134686-0000", "1089-134686-0001", "1089-134691-0000", "1089-134691-0001"]
    item = data[2]
    assert item["text"] == "HE COULD WAIT NO LONGER" and item["audio"].dtype == torch.float32
    assert 1.0 < item["audio"].shape[0] / 16000 < 5.0
    batch = data.collate([data[1], data[2]])
    assert batch["audio"].shape == (2, int(batch["lengths"].max())) and batch["texts"][1] == item["text"]
    assert torch.all(batch["audio"][int(batch["lengths"].argmin()), int(batch["lengths"].min()):] == 0)


def test_fsdd_digits_takes_and_words(fsdd):
    test = fsdd_digits(fsdd, split="test", sample_rate=8000)
    assert len(test) == 300
    assert {int(u.id.split("_")[2]) for u in test.utterances} == set(range(5))
    first = test.utterances[0]
    assert first.text == DIGIT_WORDS[int(first.id.split("_")[0])]
    train = fsdd_digits(fsdd.parent, split="train")
    assert len(train) == 2700 and train.sample_rate == 16000
    assert len(fsdd_digits(fsdd, split="train", takes="10-49")) == 2400
    assert parse_takes("0-2,7", None) == [0, 1, 2, 7] and parse_takes([3, 4], None) == [3, 4]
    with pytest.raises(ValueError, match="val split has no default takes"):
        fsdd_digits(fsdd, split="val")
    with pytest.raises(ValueError, match="expected ranges"):
        parse_takes("five", None)


def test_fsdd_digit_strings_are_seeded_one_speaker_and_redrawn_in_training(fsdd):
    test = fsdd_digit_strings(fsdd, split="test", sample_rate=8000, num_items=20)
    again = fsdd_digit_strings(fsdd, split="test", sample_rate=8000, num_items=20)
    lengths = []
    for i in range(20):
        clips, pauses = test.draw(i)
        assert (clips, pauses) == again.draw(i)
        speakers = {test.utterances[c].id.split("_")[1] for c in clips}
        takes = {int(test.utterances[c].id.split("_")[2]) for c in clips}
        assert len(speakers) == 1 and takes <= set(range(5))
        assert 2 <= len(clips) <= 7 and all(400 <= p <= 2400 for p in pauses)
        lengths.append(len(clips))
    item = test[3]
    clips, pauses = test.draw(3)
    expected = sum(test.audio(c).shape[0] for c in clips) + sum(pauses)
    assert item["audio"].shape == (expected,)
    assert item["text"] == " ".join(test.utterances[c].text for c in clips)
    assert len(set(lengths)) > 2
    train = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=5)
    before = [train.draw(i) for i in range(5)]
    train.set_epoch(1)
    assert [train.draw(i) for i in range(5)] != before
    test.set_epoch(1)
    assert test.draw(0) == again.draw(0)  # the test set never changes


def test_fsdd_digit_strings_single_fraction_mixes_in_isolated_digits(fsdd):
    mixed = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=200, single_fraction=0.4)
    counts = [len(mixed.draw(i)[0]) for i in range(200)]
    singles = counts.count(1)
    assert 50 <= singles <= 110 and max(counts) == 7   # min_digits is 2 here: about 80
    item = next(mixed[i] for i in range(200) if counts[i] == 1)
    assert len(item["text"].split()) == 1
    everything = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=20, single_fraction=1.0)
    assert all(len(everything.draw(i)[0]) == 1 for i in range(20))
    with pytest.raises(ValueError, match="single_fraction"):
        fsdd_digit_strings(fsdd, split="train", single_fraction=1.5)


def test_fsdd_digit_strings_edge_silence_and_speed_perturbation(fsdd):
    plain = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=30, single_fraction=1.0)
    augmented = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=30, single_fraction=1.0,
                                   edge_pause_s=(0.1, 0.2), speed_factors=(0.9, 1.1))
    longer = shorter = 0
    for i in range(30):
        assert augmented.draw(i) == plain.draw(i)   # same digits and pauses: the augmentation is drawn after them
        a, p = augmented[i]["audio"], plain[i]["audio"]
        lead = int(torch.nonzero(a).min())
        trail = a.shape[0] - 1 - int(torch.nonzero(a).max())
        assert 800 - 2 <= lead and 800 - 2 <= trail   # at least 0.1 s of silence each side (a clip may start at 0)
        speech = a.shape[0] - lead - trail
        longer += speech > p.shape[0] * 1.05
        shorter += speech < p.shape[0] * 0.95
    assert longer and shorter   # both factors drawn: 0.9 lengthens a clip by 1/0.9, 1.1 shortens it
    assert torch.equal(augmented[3]["audio"], augmented[3]["audio"])   # seeded
    half = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=40, single_fraction=1.0,
                              edge_pause_s=(0.1, 0.2), edge_pause_fraction=0.5)
    unpadded = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=40, single_fraction=1.0)
    padded = sum(half[i]["audio"].shape[0] > unpadded[i]["audio"].shape[0] for i in range(40))
    assert 8 <= padded <= 32   # about half the items get edge silence, the rest start and end on speech
    for bad in ({"edge_pause_s": (0.2, 0.1)}, {"edge_pause_fraction": 1.5}, {"speed_factors": (3.0,)},
                {"speed_factors": ()}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fsdd_digit_strings(fsdd, split="train", num_items=5, **bad)


def test_change_tempo_shortens_a_tone_and_keeps_its_pitch():
    rate = 16000
    t = torch.arange(rate) / rate
    tone = torch.sin(2 * math.pi * 440.0 * t) * torch.hann_window(rate)
    for factor in (0.8, 1.5):
        faster = change_tempo(tone, factor, rate)
        assert faster.shape[0] == round(rate / factor)
        spectrum = torch.fft.rfft(faster).abs()
        peak_hz = int(spectrum.argmax()) * rate / faster.shape[0]
        assert abs(peak_hz - 440.0) < 5.0, (factor, peak_hz)   # resampling at 1.5 would put it at 660 Hz
        envelope = faster.abs().unfold(0, 400, 400).mean(1)
        centre = float((envelope * torch.arange(envelope.shape[0])).sum() / envelope.sum()) * 400
        assert abs(centre - faster.shape[0] / 2) < 0.05 * faster.shape[0]   # the envelope is squeezed, not cut
    with pytest.raises(ValueError, match="256 samples at 16000 Hz"):
        change_tempo(tone[:256], 1.5, rate)


def test_fsdd_digit_strings_tempo_perturbation(fsdd):
    plain = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=30, single_fraction=1.0)
    faster = fsdd_digit_strings(fsdd, split="train", sample_rate=8000, num_items=30, single_fraction=1.0,
                                tempo_factors=(1.0, 1.5))
    changed = 0
    for i in range(30):
        assert faster.draw(i) == plain.draw(i)
        a, p = faster[i]["audio"], plain[i]["audio"]
        if a.shape[0] != p.shape[0]:
            assert a.shape[0] == round(p.shape[0] / 1.5)
            changed += 1
        else:
            assert torch.equal(a, p)
    assert 5 <= changed <= 25   # about half the clips drew 1.5
    with pytest.raises(ValueError, match="tempo_factors"):
        fsdd_digit_strings(fsdd, split="train", num_items=5, tempo_factors=(2.5,))


# ---------------------------------------------------------------------------------------------- written layouts
def test_nemo_manifest_relative_paths_offsets_and_duration_filter(tmp_path):
    (tmp_path / "audio").mkdir()
    _wav(tmp_path / "audio" / "a.wav", 0.5)
    _wav(tmp_path / "b.flac", 0.3, rate=16000)
    lines = [{"audio_filepath": "audio/a.wav", "duration": 0.5, "text": "hello world"},
             {"audio_filepath": str(tmp_path / "b.flac"), "duration": 0.3, "text": "absolute path"},
             {"audio_filepath": "audio/a.wav", "duration": 0.2, "offset": 0.1, "text": "a slice"},
             {"audio_filepath": "audio/a.wav", "duration": 30.0, "text": "too long"}]
    manifest = tmp_path / "train_manifest.json"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = nemo_manifest(tmp_path, split="train", sample_rate=16000, max_duration=16.7)
    assert [u.text for u in data.utterances] == ["hello world", "absolute path", "a slice"]
    assert data[0]["audio"].shape == (8000,) and data[1]["audio"].shape == (4800,)
    assert data[2]["audio"].shape == (3200,)   # 0.2 s from 0.1 s
    both = nemo_manifest(tmp_path, manifest="train_manifest.json,train_manifest.json", max_duration=16.7)
    assert len(both) == 6


@pytest.mark.parametrize("line, message", [
    ('{"audio_filepath": "missing.wav", "duration": 1.0, "text": "x"}', "missing.wav does not exist"),
    ('{"audio_filepath": "a.wav", "duration": 1.0, "text": "  "}', "empty transcript"),
    ('{"audio_filepath": "a.wav", "duration": 1.0', "not a JSON object"),
    ('{"duration": 1.0, "text": "x"}', r"missing key\(s\) \['audio_filepath'\]"),
    ('{"audio_filepath": "a.wav", "duration": -1, "text": "x"}', "not a positive number"),
])
def test_nemo_manifest_bad_lines_name_file_and_line(tmp_path, line, message):
    _wav(tmp_path / "a.wav")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "duration": 0.2, "text": "fine"}) + "\n" + line + "\n")
    with pytest.raises((TranscriptError, FileNotFoundError), match=message) as err:
        nemo_manifest_utterances(manifest)
    assert f"{manifest}:2" in str(err.value)


def test_kaldi_data_dir(tmp_path):
    _wav(tmp_path / "u1.wav")
    _wav(tmp_path / "u2.wav", channels=2)
    (tmp_path / "wav.scp").write_text(f"u2 {tmp_path / 'u2.wav'}\nu1 u1.wav\n")
    (tmp_path / "text").write_text("u1 THE FIRST ONE\nu2 second\n")
    data = kaldi(tmp_path, sample_rate=8000)
    assert [u.id for u in data.utterances] == ["u1", "u2"] and data[0]["text"] == "THE FIRST ONE"
    assert data[1]["audio"].dim() == 1   # stereo downmixed


@pytest.mark.parametrize("scp, text, message", [
    ("u1 sox u1.sph -t wav - |\n", "u1 hi\n", "piped command"),
    ("u1 u1.wav\nu2 u1.wav\n", "u1 hi\n", "no transcript for utterance u2"),
    ("u1 u1.wav\n", "u1\n", "empty transcript"),
    ("u1 nowhere.wav\n", "u1 hi\n", "nowhere.wav does not exist"),
    ("u1 u1.wav\nu1 u1.wav\n", "u1 hi\n", "appears twice"),
])
def test_kaldi_bad_input(tmp_path, scp, text, message):
    _wav(tmp_path / "u1.wav")
    (tmp_path / "wav.scp").write_text(scp)
    (tmp_path / "text").write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        kaldi_utterances(tmp_path)
    assert "wav.scp" in str(err.value) or "text" in str(err.value)


def test_speechbrain_csv_with_data_root(tmp_path):
    (tmp_path / "wavs").mkdir()
    _wav(tmp_path / "wavs" / "x.wav")
    csv_file = tmp_path / "test.csv"
    csv_file.write_text("ID,duration,wav,spk_id,wrd\nx,0.2,$data_root/wavs/x.wav,spk1,GOOD MORNING\n")
    data = speechbrain_csv(tmp_path, split="test", sample_rate=8000)
    assert data.utterances[0].text == "GOOD MORNING" and data[0]["audio"].shape == (1600,)
    other = tmp_path / "other"
    other.mkdir()
    (other / "wavs").mkdir()
    _wav(other / "wavs" / "x.wav", 0.1)
    assert speechbrain_utterances(csv_file, data_root=other)[0].audio == other / "wavs" / "x.wav"
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,duration,wav,spk_id\nx,0.2,a.wav,s\n")
    with pytest.raises(TranscriptError, match=r"missing column\(s\) \['wrd'\]"):
        speechbrain_utterances(bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("ID,duration,wav,spk_id,wrd\nx,0.2,$data_root/wavs/x.wav,spk1,A,extra\n")
    with pytest.raises(TranscriptError, match=f"{ragged}:2"):
        speechbrain_utterances(ragged)


def test_librispeech_layout_errors(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    _wav(chapter / "1-2-0000.flac", rate=16000)
    _wav(chapter / "1-2-0001.flac", rate=16000)
    trans = chapter / "1-2.trans.txt"
    trans.write_text("1-2-0000 HELLO\n1-2-0001 THERE\n")
    assert len(librispeech(tmp_path, split="val")) == 2   # val -> dev-clean
    trans.write_text("1-2-0000 HELLO\n")
    with pytest.raises(TranscriptError, match="no transcript line for utterance.*1-2-0001"):
        librispeech(tmp_path, split="val")
    trans.write_text("1-2-0000 HELLO\n1-2-0001 THERE\n1-2-0002 GONE\n")
    with pytest.raises(FileNotFoundError, match=f"{trans}:3: no audio for utterance 1-2-0002"):
        librispeech(tmp_path, split="val")
    trans.write_text("1-2-0000\n1-2-0001 THERE\n")
    with pytest.raises(TranscriptError, match=f"{trans}:1 .*empty transcript"):
        librispeech(tmp_path, split="val")


def test_a_broken_audio_file_is_named_when_read(tmp_path):
    bad = tmp_path / "cut.wav"
    _wav(bad, 0.5)
    bad.write_bytes(bad.read_bytes()[:2000])
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"audio_filepath": "cut.wav", "duration": 0.5, "text": "x"}) + "\n")
    data = ASRDataset(nemo_manifest_utterances(manifest), 16000)
    with pytest.raises(audio_io.AudioFileError, match="cut.wav: truncated"):
        data[0]


def test_digit_string_arguments_are_checked(fsdd):
    with pytest.raises(ValueError, match="lengths must be"):
        FSDDDigitStrings(fsdd, range(5), lengths=(3, 2))
    with pytest.raises(ValueError, match="pause_s must be"):
        FSDDDigitStrings(fsdd, range(5), pause_s=(0.3, 0.1))


def test_fsdd_long_recording(fsdd):
    from mtp.datasets.speech_recognition import fsdd_recording

    wave, text = fsdd_recording(fsdd, duration_s=20.0, sample_rate=8000, seed=3)
    again, same = fsdd_recording(fsdd, duration_s=20.0, sample_rate=8000, seed=3)
    assert torch.equal(wave, again) and text == same
    assert 15 * 8000 < wave.shape[0] <= 20 * 8000
    words = text.split()
    assert len(words) > 20 and set(words) <= set(DIGIT_WORDS)
    with pytest.raises(ValueError, match="shorter than one clip"):
        fsdd_recording(fsdd, duration_s=0.01, sample_rate=8000)
