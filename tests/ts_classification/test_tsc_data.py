"""Time-series classification data: the archive formats through aeon, bad files named, missing values, padding,
and the validation split carved from TRAIN."""
import numpy as np
import pytest
import torch

from mtp.datasets.ts_classification import (SeriesFileError, SeriesTransform, archive_split, csv_folder_split,
                                            fill_missing, pad_batch, read_series_file, stratified_split)


@pytest.fixture(scope="module")
def tsc(data_dir):
    return data_dir / "tsc"


def test_archive_files_load_with_header_class_order_and_variable_lengths(tsc):
    motions = read_series_file(tsc / "multivariate" / "BasicMotions_TRAIN.ts")
    assert len(motions.series) == 40 and motions.num_channels == 6 and set(motions.lengths) == {100}
    # the @classLabel order (Standing Running Walking Badminton), which MPTSNet's class indices follow
    assert motions.class_names == ["standing", "running", "walking", "badminton"]
    vowels = read_series_file(tsc / "multivariate" / "JapaneseVowels_TEST.ts")
    assert len(vowels.series) == 370 and vowels.num_channels == 12
    assert min(vowels.lengths) == 7 and max(vowels.lengths) == 29
    assert vowels.class_names == [str(i) for i in range(1, 10)]
    gun = read_series_file(tsc / "univariate" / "GunPoint_TEST.ts")
    assert len(gun.series) == 150 and gun.series[0].shape == (1, 150)


def _write_tsv_and_arff(tmp_path, gun):
    rows = ["\t".join([label] + [f"{v:.6f}" for v in s[0]]) for s, label in zip(gun.series, gun.labels)]
    (tmp_path / "Gun_TEST.tsv").write_text("\n".join(rows) + "\n")
    length = gun.series[0].shape[1]
    header = ["@relation Gun"] + [f"@attribute att{i} numeric" for i in range(length)]
    header += ["@attribute target {1,2}", "@data"]
    body = [",".join([f"{v:.6f}" for v in s[0]] + [label]) for s, label in zip(gun.series, gun.labels)]
    (tmp_path / "Gun_TEST.arff").write_text("\n".join(header + body) + "\n")


def test_tsv_and_arff_give_the_same_series_as_ts(tsc, tmp_path):
    gun = read_series_file(tsc / "univariate" / "GunPoint_TEST.ts")
    _write_tsv_and_arff(tmp_path, gun)
    for suffix in (".tsv", ".arff"):
        other = read_series_file(tmp_path / f"Gun_TEST{suffix}")
        assert other.labels == gun.labels, suffix
        np.testing.assert_allclose(np.stack(other.series), np.stack(gun.series), atol=1e-6)


TS_HEAD = "@problemName toy\n@timeStamps false\n@missing true\n@univariate false\n@dimensions 2\n" \
          "@equalLength false\n@classLabel true a b\n@data\n"


def test_bad_files_are_named_with_line_and_expectation(tmp_path):
    bad_header = tmp_path / "bad_header.ts"
    bad_header.write_text(TS_HEAD.replace("@dimensions 2", "@dimensions two") + "1,2,3:4,5,6:a\n")
    with pytest.raises(SeriesFileError, match=r"bad_header.ts:5: malformed header"):
        read_series_file(bad_header)
    uneven = tmp_path / "uneven.ts"
    uneven.write_text(TS_HEAD + "1,2,3:4,5,6:a\n1,2,3:b\n")
    with pytest.raises(SeriesFileError, match=r"uneven.ts:10: series has 1 channels.*says 2"):
        read_series_file(uneven)
    garbage = tmp_path / "garbage.ts"
    garbage.write_text("@problemName x\n@data\nnot,numbers:at:all\n")
    with pytest.raises(SeriesFileError, match="garbage.ts"):
        read_series_file(garbage)
    with pytest.raises(SeriesFileError, match="unsupported suffix"):
        read_series_file(tmp_path / "x.xlsx") if (tmp_path / "x.xlsx").write_text("") is not None else None


def _toy_archive(folder, train_lines, test_lines, head=TS_HEAD):
    folder.mkdir(exist_ok=True)
    (folder / "Toy_TRAIN.ts").write_text(head + "".join(train_lines))
    (folder / "Toy_TEST.ts").write_text(head + "".join(test_lines))
    return folder


def test_test_split_is_checked_against_train(tmp_path):
    train = ["1,2,3:4,5,6:a\n", "2,3,4:5,6,7:a\n", "1,1,1:2,2,2:b\n", "0,1,0:1,0,1:b\n"]
    folder = _toy_archive(tmp_path / "unseen", train, ["1,2,3:4,5,6:a\n", "1,2,3:4,5,6:c\n"],
                          head=TS_HEAD.replace("@classLabel true a b", "@classLabel true a b c"))
    with pytest.raises(SeriesFileError, match=r"Toy_TEST.ts: class 'c' \(series 1\) never occurs in .*Toy_TRAIN"):
        archive_split(folder, "test", "Toy")
    one_channel = TS_HEAD.replace("@dimensions 2", "@dimensions 1").replace("@univariate false", "@univariate true")
    folder = tmp_path / "channels"
    folder.mkdir()
    (folder / "Toy_TRAIN.ts").write_text(TS_HEAD + "".join(train))
    (folder / "Toy_TEST.ts").write_text(one_channel + "1,2,3:a\n")
    with pytest.raises(SeriesFileError, match=r"Toy_TEST.ts: 1 channels, but .*Toy_TRAIN.ts has 2"):
        archive_split(folder, "test", "Toy")
    with pytest.raises(FileNotFoundError, match="Nope_TRAIN.*timeseriesclassification.com"):
        archive_split(folder, "train", "Nope")


def test_missing_values_policies_and_empty_channels(tmp_path):
    x = np.array([[1.0, np.nan, 3.0, np.nan], [np.nan, 2.0, 2.0, 4.0]])
    np.testing.assert_allclose(fill_missing(x, "interpolate", "s"), [[1, 2, 3, 3], [2, 2, 2, 4]])
    np.testing.assert_allclose(fill_missing(x, "zero", "s"), [[1, 0, 3, 0], [0, 2, 2, 4]])
    with pytest.raises(SeriesFileError, match=r"f.ts, series 3: missing value at channel 0, step 1"):
        fill_missing(x, "error", "f.ts, series 3")
    with pytest.raises(SeriesFileError, match=r"series 2: channel 1 has no values"):
        fill_missing(np.array([[1.0, 2.0], [np.nan, np.nan]]), "zero", "series 2")
    # '?' in a .ts file is a missing value, read as NaN
    folder = _toy_archive(tmp_path, ["1,?,3:4,5,6:a\n", "?,?,?:1,2,3:b\n", "1,2,3:4,5,6:a\n", "3,2,1:1,1,1:b\n"],
                          ["1,2,3:4,5,6:a\n"])
    train = archive_split(folder, "train", "Toy", val_fraction=0.0)
    train.transform = SeriesTransform(missing="interpolate")
    np.testing.assert_allclose(train[0][0][0], [1, 2, 3])
    with pytest.raises(SeriesFileError, match=r"Toy_TRAIN.ts .*series 1: channel 0 has no values"):
        train[1]


def test_normalisation_modes():
    x = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0]])
    z = SeriesTransform(normalize="series")(x, "s")
    np.testing.assert_allclose(z[0], [-1.224745, 0, 1.224745], atol=1e-6)
    np.testing.assert_allclose(z[1], 0)  # a constant channel stays finite
    c = SeriesTransform(normalize="channel", mean=[2.0, 10.0], std=[1.0, 2.0])(x, "s")
    np.testing.assert_allclose(c, [[-1, 0, 1], [0, 0, 0]])


def test_validation_is_stratified_seeded_and_disjoint(tsc):
    labels = read_series_file(tsc / "multivariate" / "JapaneseVowels_TRAIN.ts").labels
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    assert stratified_split(labels, 0.2, seed=0) == (train, val)
    assert stratified_split(labels, 0.2, seed=1) != (train, val)
    for c in set(labels):  # 30 per class in TRAIN -> 6 per class in validation
        assert sum(labels[i] == c for i in val) == 6
    part = archive_split(tsc / "multivariate", "val", "JapaneseVowels")
    assert part.indices == val and len(part.full_train) == 270


def test_padding_and_mask():
    x, mask = pad_batch([np.ones((2, 3)), np.full((2, 5), 2.0)])
    assert x.shape == (2, 2, 5) and mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert x[0, :, 3:].abs().sum() == 0
    x, mask = pad_batch([np.ones((1, 3))], length=8)
    assert x.shape == (1, 1, 8) and int(mask.sum()) == 3 and x.dtype == torch.float32


def test_csv_series_folders(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            label = "up" if i % 2 else "down"
            steps = 10 + i
            frame = pd.DataFrame({"acc_x": rng.normal(size=steps), "acc_y": rng.normal(size=steps), "label": label})
            frame.to_csv(tmp_path / split / f"s{i}.csv", index=False)
    train = csv_folder_split(tmp_path, "train", val_fraction=0.34)
    val = csv_folder_split(tmp_path, "val", val_fraction=0.34)
    test = csv_folder_split(tmp_path, "test")
    assert len(train) == 4 and len(val) == 2 and len(test) == 2
    assert train.class_names == ["down", "up"] and train.series[0].shape[0] == 2
    bad = tmp_path / "test" / "s9.csv"
    pd.DataFrame({"acc_x": [1.0, 2.0], "acc_y": [1.0, 2.0], "label": ["up", "down"]}).to_csv(bad, index=False)
    with pytest.raises(SeriesFileError, match="s9.csv: column 'label' must hold one class"):
        csv_folder_split(tmp_path, "test")
