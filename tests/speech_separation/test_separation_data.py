"""Speech separation data: audio I/O, mixing, FSDD mixtures/lists, LibriMix and wsj0-mix layouts, long streams."""
import csv
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mtp.datasets.speech_separation import (AudioFileError, FSDDMixtures, LibriMix, LongStream, MixtureList,
                                            WSJ0Mix, fsdd_files, fsdd_mixtures, make_stream, mix_sources,
                                            read_audio, write_audio)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recordings(data_dir):
    return data_dir / "speech" / "fsdd" / "recordings"


def _db(a, b):
    return 20 * math.log10(a.pow(2).mean().sqrt().item() / b.pow(2).mean().sqrt().item())


# ---------------------------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("snr", [-2.5, -0.7, 0.0, 1.3, 2.5])
def test_mix_sums_exactly_and_keeps_relative_level(recordings, snr):
    s1, _ = read_audio(recordings / "3_theo_1.wav")
    s2, _ = read_audio(recordings / "8_nicolas_3.wav")
    assert s1.shape[0] != s2.shape[0]
    mixture, sources = mix_sources(s1, s2, snr)
    assert mixture.dtype == sources.dtype == torch.float32
    assert sources.shape == (2, max(len(s1), len(s2))) and mixture.shape == (sources.shape[1],)
    assert torch.equal(mixture, sources[0] + sources[1])
    short = 0 if len(s1) < len(s2) else 1
    assert torch.all(sources[short, min(len(s1), len(s2)):] == 0)  # "max" mode: padded at the end
    assert mixture.abs().max() < 0.9  # not clipped at the default level
    assert abs(_db(sources[0, : len(s1)], sources[1, : len(s2)]) - snr) < 1e-3
    # The sources are scaled copies of the inputs.
    torch.testing.assert_close(sources[0, : len(s1)] / sources[0, : len(s1)].norm(), s1 / s1.norm(), atol=1e-6,
                               rtol=0)


def test_mix_caps_peak_and_keeps_level_when_loud(recordings):
    s1, _ = read_audio(recordings / "0_george_12.wav")
    s2, _ = read_audio(recordings / "5_lucas_20.wav")
    mixture, sources = mix_sources(s1, s2, 1.5, level_db=0.0)  # 0 dBFS RMS would clip
    assert max(mixture.abs().max(), sources.abs().max()) == pytest.approx(0.9, abs=1e-6)
    assert torch.equal(mixture, sources.sum(0))
    assert abs(_db(sources[0, : len(s1)], sources[1, : len(s2)]) - 1.5) < 1e-3


def test_mix_rejects_silence():
    with pytest.raises(ValueError, match="s2 is silent"):
        mix_sources(torch.randn(100), torch.zeros(80), 0.0)


# ---------------------------------------------------------------------------------------------- FSDD on the fly
def test_fsdd_mixtures_draws_and_determinism(recordings):
    ds = FSDDMixtures(recordings.parent, mixtures_per_epoch=200, seed=3)
    assert len(ds) == 200 and len(ds.files) == 6 * 10 * 40
    draws = [ds.draw(i) for i in range(len(ds))]
    assert all(a.speaker != b.speaker for a, b, _ in draws)
    assert all(10 <= f.take <= 49 for a, b, _ in draws for f in (a, b))
    assert all(-2.5 <= snr <= 2.5 for _, _, snr in draws)
    assert len({a.speaker for a, _, _ in draws}) == 6  # all speakers get drawn

    again = FSDDMixtures(recordings, mixtures_per_epoch=200, seed=3)
    assert [again.draw(i) for i in range(len(ds))] == draws
    ds.set_epoch(1)
    epoch1 = [ds.draw(i) for i in range(len(ds))]
    assert sum(x != y for x, y in zip(epoch1, draws)) > 190
    resumed = FSDDMixtures(recordings, mixtures_per_epoch=200, seed=3)
    resumed.set_epoch(1)  # a resumed run replays epoch 1 exactly
    assert [resumed.draw(i) for i in range(len(ds))] == epoch1
    other_seed = FSDDMixtures(recordings, mixtures_per_epoch=200, seed=4)
    assert [other_seed.draw(i) for i in range(20)] != draws[:20]

    item, replay = ds[7], resumed[7]
    assert item["id"] == replay["id"] and torch.equal(item["mixture"], replay["mixture"])
    assert torch.equal(item["mixture"], item["sources"].sum(0))
    a, b, snr = epoch1[7]
    assert item["sources"].shape == (2, max(sf.info(str(a.path)).frames, sf.info(str(b.path)).frames))
    with pytest.raises(IndexError):
        ds[200]


def test_fsdd_mixtures_stream_crops(recordings):
    ds = FSDDMixtures(recordings, mixtures_per_epoch=60, seed=1, stream_fraction=1.0, crop_s=1.5)
    items = [ds[i] for i in range(20)]
    for item in items:
        assert "_stream_" in item["id"] and item["sources"].shape == (2, 12000)
        assert torch.equal(item["mixture"], item["sources"].sum(0))
        assert (item["sources"].abs().amax(dim=1) > 0.01).all()  # both speakers talk in every crop
        a, b = item["id"].split("_stream_")[1].split("+")
        assert a != b
        ratio = _db(item["sources"][0], item["sources"][1])  # levels are per utterance: only roughly +-2.5 dB
        assert abs(ratio) < 12.0
    # crops start anywhere: inside words (a source already loud at the first sample) and in pauses
    assert any(bool(item["sources"][:, :8].abs().amax() > 1e-3) for item in items)
    assert len({tuple(item["sources"][:, 0].tolist()) for item in items}) > 10
    replay = FSDDMixtures(recordings, mixtures_per_epoch=60, seed=1, stream_fraction=1.0, crop_s=1.5)
    assert torch.equal(replay[3]["mixture"], items[3]["mixture"])
    half = fsdd_mixtures(recordings, split="train", mixtures_per_epoch=200, stream_fraction=0.5, crop_s=1.0)
    kinds = ["_stream_" in half[i]["id"] for i in range(200)]
    assert 70 < sum(kinds) < 130
    none = FSDDMixtures(recordings, mixtures_per_epoch=10, seed=1)  # the default: pairs only, as before
    assert not any("_stream_" in none[i]["id"] for i in range(10))
    with pytest.raises(ValueError, match="stream_fraction"):
        FSDDMixtures(recordings, stream_fraction=1.5)
    with pytest.raises(ValueError, match="crop_s"):
        FSDDMixtures(recordings, stream_fraction=0.5, crop_s=0)


def test_fsdd_builder_splits(recordings):
    train = fsdd_mixtures(recordings, split="train", mixtures_per_epoch=10)
    assert isinstance(train, FSDDMixtures) and {f.take for f in train.files} == set(range(10, 50))
    val = fsdd_mixtures(recordings.parent, split="val")
    assert isinstance(val, MixtureList) and len(val) == 300
    assert all(5 <= int(p.stem.split("_")[2]) <= 9 for _, p1, p2, _ in val.rows for p in (p1, p2))
    with pytest.raises(ValueError, match="split"):
        fsdd_mixtures(recordings, split="dev")


# ---------------------------------------------------------------------------------------------- mixture lists
def test_mixture_list_on_real_test_csv(data_dir, recordings):
    ds = MixtureList(data_dir / "speech" / "separation" / "mixtures_test.csv", recordings)
    assert len(ds) == 300
    assert all(int(p.stem.split("_")[2]) <= 4 and p1.stem.split("_")[1] != p2.stem.split("_")[1]
               for _, p1, p2, _ in ds.rows for p in (p1, p2))
    item = ds[0]
    assert item["id"] == "test_0000"
    s1, _ = read_audio(recordings / "6_nicolas_2.wav")
    s2, _ = read_audio(recordings / "7_jackson_0.wav")
    assert item["mixture"].shape == (max(len(s1), len(s2)),)
    assert torch.equal(item["mixture"], item["sources"].sum(0))
    assert abs(_db(item["sources"][0, : len(s1)], item["sources"][1, : len(s2)]) - (-2.298)) < 1e-3
    batch = ds.collate([ds[0], ds[1], ds[2]])
    lengths = [ds[i]["mixture"].shape[0] for i in range(3)]
    assert batch["mixture"].shape == (3, max(lengths)) and batch["sources"].shape == (3, 2, max(lengths))
    assert batch["lengths"].tolist() == lengths and batch["ids"] == ["test_0000", "test_0001", "test_0002"]
    shortest = int(np.argmin(lengths))
    assert torch.all(batch["mixture"][shortest, min(lengths):] == 0)


def test_mixture_list_missing_file_names_row_and_file(tmp_path, recordings):
    path = tmp_path / "mixtures.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mix_id", "s1", "s2", "s1_snr_db_rel_s2"])
        w.writerow(["m0", "0_george_0.wav", "1_jackson_0.wav", "0.5"])
        w.writerow(["m1", "2_theo_3.wav", "9_nobody_7.wav", "-1.0"])
    with pytest.raises(FileNotFoundError, match=r"row 1 \(CSV line 3\) s2=.*9_nobody_7\.wav"):
        MixtureList(path, recordings)


# ---------------------------------------------------------------------------------------------- LibriMix / wsj0-mix
def _fake_mixtures(recordings, sample_rate, mode):
    """Three (mixture, s1, s2) triples from FSDD, cut ("min") or padded ("max") like the generation scripts."""
    pairs = [("0_george_5.wav", "1_jackson_5.wav"), ("2_lucas_6.wav", "3_theo_6.wav"),
             ("4_nicolas_7.wav", "5_yweweler_7.wav")]
    out = []
    for a, b in pairs:
        s1, s2 = (read_audio(recordings / name, sample_rate)[0] for name in (a, b))
        mixture, sources = mix_sources(s1, s2, 1.0)
        if mode == "min":
            n = min(s1.shape[0], s2.shape[0])
            mixture, sources = mixture[:n], sources[:, :n]
        out.append((f"{a[:-4]}_{b[:-4]}", mixture, sources))
    return out


def _write_librimix(recordings, root):
    mode_dir = root / "Libri2Mix" / "wav8k" / "min"
    rows = []
    for i, (name, mixture, sources) in enumerate(_fake_mixtures(recordings, 8000, "min")):
        write_audio(mode_dir / "test" / "mix_clean" / f"{name}.wav", mixture, 8000)
        for k in range(2):
            write_audio(mode_dir / "test" / f"s{k + 1}" / f"{name}.wav", sources[k], 8000)
        # Paths from the generating machine, with and without a Libri2Mix folder in them.
        elsewhere = "/mnt/scratch/l2m/test" if i == 0 else "/home/someone/corpora/Libri2Mix/wav8k/min/test"
        rows.append([name, f"{elsewhere}/mix_clean/{name}.wav", f"{elsewhere}/s1/{name}.wav",
                     f"{elsewhere}/s2/{name}.wav", mixture.shape[0]])
    (mode_dir / "metadata").mkdir()
    with open(mode_dir / "metadata" / "mixture_test_mix_clean.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"])
        w.writerows(rows)
    return mode_dir, rows


def test_librimix_layout_with_foreign_absolute_paths(tmp_path, recordings):
    mode_dir, rows = _write_librimix(recordings, tmp_path)
    for root in (tmp_path, tmp_path / "Libri2Mix"):
        ds = LibriMix(root, "test")
        assert len(ds) == 3 and [it[0] for it in ds.items] == [r[0] for r in rows]
        item = ds[1]
        assert item["id"] == rows[1][0] and item["mixture"].shape == (rows[1][4],)
        assert item["sources"].shape == (2, rows[1][4])
        expected, _ = read_audio(mode_dir / "test" / "s2" / f"{rows[1][0]}.wav")
        assert torch.equal(item["sources"][1], expected)
        # 16-bit files: the sum holds up to rounding of each file.
        torch.testing.assert_close(item["mixture"], item["sources"].sum(0), atol=2 / 32768, rtol=0)
    up = LibriMix(tmp_path, "test", sample_rate=16000)  # no wav16k: the 8 kHz files, resampled
    assert up[0]["mixture"].shape == (2 * rows[0][4],)

    (mode_dir / "test" / "s1" / f"{rows[2][0]}.wav").unlink()
    with pytest.raises(FileNotFoundError, match=rf"row 2 \(CSV line 4\) source_1_path=.*{rows[2][0]}\.wav"):
        LibriMix(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        LibriMix(tmp_path, "eval")


def test_librimix_without_metadata_scans_the_folder(tmp_path, recordings):
    mode_dir, rows = _write_librimix(recordings, tmp_path)
    (mode_dir / "metadata" / "mixture_test_mix_clean.csv").unlink()
    ds = LibriMix(tmp_path, "test")
    assert sorted(it[0] for it in ds.items) == sorted(r[0] for r in rows)


def test_wsj0mix_layout(tmp_path, recordings):
    split_dir = tmp_path / "2speakers" / "wav16k" / "max" / "cv"
    triples = _fake_mixtures(recordings, 16000, "max")
    for name, mixture, sources in triples:
        write_audio(split_dir / "mix" / f"{name}.wav", mixture, 16000)
        for k in range(2):
            write_audio(split_dir / f"s{k + 1}" / f"{name}.wav", sources[k], 16000)
    for split in ("cv", "val"):
        ds = WSJ0Mix(tmp_path, split, sample_rate=16000, mode="max")
        assert len(ds) == 3
        by_id = {name: mixture.shape[0] for name, mixture, _ in triples}
        item = ds[0]
        assert item["mixture"].shape == (by_id[item["id"]],) and item["sources"].shape == (2, by_id[item["id"]])
    down = WSJ0Mix(tmp_path / "2speakers", "val", sample_rate=8000, mode="max")[0]  # resampled from wav16k
    assert down["mixture"].shape == (math.ceil(by_id[down["id"]] / 2),)
    with pytest.raises(FileNotFoundError, match="no .wav mixtures"):
        WSJ0Mix(tmp_path, "tt", sample_rate=16000, mode="max")
    (split_dir / "s2" / f"{triples[0][0]}.wav").unlink()
    with pytest.raises(FileNotFoundError, match=rf"s2/{triples[0][0]}\.wav"):
        WSJ0Mix(tmp_path, "cv", sample_rate=16000, mode="max")


# ---------------------------------------------------------------------------------------------- audio I/O
def test_read_audio_errors_name_the_file(tmp_path):
    wave = 0.1 * torch.sin(torch.arange(8000) * 0.05)
    good = write_audio(tmp_path / "good.wav", wave, 8000)
    data = good.read_bytes()

    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2 + 1])
    with pytest.raises(AudioFileError, match=r"cut\.wav: truncated"):
        read_audio(cut)
    text = tmp_path / "notes.wav"
    text.write_bytes(b"this is not audio at all\n" * 20)
    with pytest.raises(AudioFileError, match=r"notes\.wav: not a readable audio file"):
        read_audio(text)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty\.wav: empty file"):
        read_audio(empty)
    no_frames = tmp_path / "no_frames.wav"
    sf.write(str(no_frames), np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")
    with pytest.raises(AudioFileError, match=r"no_frames\.wav: no samples"):
        read_audio(no_frames)
    nan = tmp_path / "nan.wav"
    samples = np.full(100, 0.1, dtype=np.float32)
    samples[37] = np.nan
    sf.write(str(nan), samples, 8000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"nan\.wav: non-finite sample .* frame 37"):
        read_audio(nan)
    with pytest.raises(AudioFileError, match=r"absent\.wav: no such file"):
        read_audio(tmp_path / "absent.wav")
    assert issubclass(AudioFileError, ValueError)


def test_read_audio_resamples_and_downmixes(tmp_path, recordings):
    wave, sr = read_audio(recordings / "7_theo_0.wav")
    up, sr_up = read_audio(recordings / "7_theo_0.wav", sample_rate=16000)
    assert sr == 8000 and sr_up == 16000 and up.shape == (2 * wave.shape[0],) and up.dtype == torch.float32

    left = 0.5 * torch.sin(torch.arange(4000) * 0.01)
    stereo = write_audio(tmp_path / "stereo.wav", torch.stack([left, -0.5 * left]), 8000, subtype="FLOAT")
    both, _ = read_audio(stereo, mono=False)
    mono, _ = read_audio(stereo)
    assert both.shape == (2, 4000) and mono.shape == (4000,)
    torch.testing.assert_close(mono, 0.25 * left, atol=1e-7, rtol=0)


@pytest.mark.parametrize("rates", [(8000, 16000), (44100, 16000), (48000, 44100)])
def test_long_audio_resamples_in_blocks_exactly_as_in_one_pass(rates):
    import torchaudio.functional as AF

    from mtp.datasets.audio import resample

    orig, new = rates
    wave = torch.randn(2, orig * 5 + 7, generator=torch.Generator().manual_seed(0))
    blocked = resample(wave, orig, new, block_s=1.0)       # 5 blocks, each with its filter margins
    assert torch.equal(blocked, AF.resample(wave, orig, new))


def test_write_audio_pcm16_roundtrip_and_clipping(tmp_path):
    wave = torch.tensor([0.0, 0.5, -0.5, 1.7, -3.0])
    back, sr = read_audio(write_audio(tmp_path / "x.part.wav", wave, 8000))
    assert sr == 8000 and sf.info(str(tmp_path / "x.part.wav")).subtype == "PCM_16"
    torch.testing.assert_close(back, wave.clamp(-1, 1), atol=1 / 32768, rtol=0)


# ---------------------------------------------------------------------------------------------- long streams
def test_make_stream_length_and_sum(recordings):
    a = [f.path for f in fsdd_files(recordings, takes=range(5), speakers=["george"])]
    b = [f.path for f in fsdd_files(recordings, takes=range(5), speakers=["lucas"])]
    mixture, sources = make_stream(a, b, duration_s=90.0, sample_rate=8000, seed=1)
    assert mixture.shape == (720_000,) and sources.shape == (2, 720_000)
    assert torch.equal(mixture, sources.sum(0))
    assert mixture.abs().max() <= 0.9 + 1e-6
    active = sources.abs() > 1e-4
    assert active.float().mean(1).min() > 0.5  # both speakers talk most of the time...
    assert (active[0] & active[1]).float().mean() > 0.3  # ...and overlap
    assert abs(_db(sources[0], sources[1])) < 4.0
    again, _ = make_stream(a, b, duration_s=90.0, sample_rate=8000, seed=1)
    assert torch.equal(again, mixture)
    assert not torch.equal(make_stream(a, b, duration_s=90.0, sample_rate=8000, seed=2)[0], mixture)
    item = LongStream(a, b, duration_s=2.0, seed=1)[0]
    assert item["id"] == "stream" and item["sources"].shape == (2, 16000)
    assert torch.equal(item["mixture"], item["sources"].sum(0))
