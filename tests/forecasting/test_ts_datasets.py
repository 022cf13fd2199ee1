"""Forecasting data on the real ETT-style CSVs in ../shared/data/ett."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from mtp.datasets import forecasting as ts
from mtp.files import DownloadError


@pytest.fixture(scope="module")
def ett_dir(data_dir):
    return data_dir / "ett"


@pytest.fixture(scope="module")
def etth1_raw(ett_dir):
    return pd.read_csv(ett_dir / "ETTh1.csv")


@pytest.fixture(scope="module")
def etth1(ett_dir):
    return ts.make_splits("ETTh1", root=ett_dir, seq_len=96, pred_len=96)


# ---------------------------------------------------------------- load_frame

def test_load_frame_reads_real_csv(ett_dir):
    frame = ts.load_frame(ett_dir / "ETTh1.csv", target="OT")
    assert frame.shape == (17420, 8)
    assert frame.attrs["freq"] == "h"
    assert pd.api.types.is_datetime64_any_dtype(frame["date"])
    assert all(frame[c].dtype == np.float64 for c in frame.columns[1:])
    assert ts.load_frame(ett_dir / "national_illness.csv").attrs["freq"] == "W-TUE"
    assert ts.load_frame(ett_dir / "exchange_rate.csv").attrs["freq"] == "D"


def _head(raw, rows=40):
    return raw.iloc[:rows].copy()


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: f.drop(columns="date"), "no date column 'date'"),
    (lambda f: f.assign(date=f["date"].where(f.index != 7, "not a date")), "row 7 (CSV line 9): column 'date'"),
    (lambda f: f.assign(HULL=f["HULL"].astype(object).where(f.index != 12, "1.2.3")),
     "row 12 (CSV line 14): column 'HULL' value '1.2.3'"),
    (lambda f: f.assign(OT=f["OT"].where(f.index != 20)), "row 20 (CSV line 22): column 'OT' is empty"),
    (lambda f: f.iloc[[0, 1, 3, 2] + list(range(4, len(f)))].reset_index(drop=True), "row 3 (CSV line 5): timestamp"),
    (lambda f: pd.concat([f.iloc[:5], f.iloc[4:]]).reset_index(drop=True), "duplicates the previous row"),
    (lambda f: f.drop(index=15).reset_index(drop=True), "row 15 (CSV line 17): timestamp 2016-07-01 16:00:00 breaks"),
])
def test_load_frame_rejects_bad_input_naming_row_and_column(etth1_raw, tmp_path, corrupt, message):
    path = tmp_path / "bad.csv"
    corrupt(_head(etth1_raw)).to_csv(path, index=False)
    with pytest.raises(ValueError, match="bad.csv") as err:
        ts.load_frame(path)
    assert message in str(err.value)


def test_load_frame_missing_target_and_file(etth1_raw, tmp_path):
    with pytest.raises(ValueError, match="target column 'load' not found"):
        ts.load_frame(_head(etth1_raw), target="load")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ts.load_frame(tmp_path / "nope.csv")


def test_load_frame_interpolates_gaps_on_request(etth1_raw):
    frame = _head(etth1_raw)
    frame.loc[10:11, "OT"] = np.nan
    filled = ts.load_frame(frame, fill="interpolate")
    ot = etth1_raw["OT"].to_numpy()
    expected = ot[9] + (ot[12] - ot[9]) * np.array([1, 2]) / 3
    np.testing.assert_allclose(filled["OT"].to_numpy()[10:12], expected)
    np.testing.assert_array_equal(filled["HUFL"].to_numpy(), etth1_raw["HUFL"].to_numpy()[:40])


# ---------------------------------------------------------------- time features

def test_time_features_equal_official_marks(fixtures_dir):
    # The iTransformer fixture marks came from thuml's own time_features(freq='h').
    from safetensors.torch import load_file
    marks = load_file(fixtures_dir / "itransformer" / "itransformer_small_io.safetensors")["x_mark_enc"]
    for row, start in enumerate(["2016-07-01 00:00:00", "2017-02-27 13:00:00"]):
        ours = ts.time_features(pd.date_range(start, periods=96, freq="h"), "h")
        torch.testing.assert_close(torch.from_numpy(ours), marks[row], rtol=0, atol=0)


def test_time_features_other_frequencies():
    stamp = pd.DatetimeIndex(["2016-07-01 00:15:30"])   # Friday, day 183 of a leap year, ISO week 26
    minute, hour, dow, dom, doy = 15 / 59 - .5, 0 / 23 - .5, 4 / 6 - .5, 0 / 30 - .5, 182 / 365 - .5
    cases = {"s": [30 / 59 - .5, minute, hour, dow, dom, doy], "t": [minute, hour, dow, dom, doy],
             "15min": [minute, hour, dow, dom, doy], "d": [dow, dom, doy], "b": [dow, dom, doy],
             "w": [dom, 25 / 52 - .5], "W-TUE": [dom, 25 / 52 - .5], "m": [6 / 11 - .5], "MS": [6 / 11 - .5]}
    for freq, expected in cases.items():
        np.testing.assert_allclose(ts.time_features(stamp, freq)[0], np.float32(expected), err_msg=freq)
    assert ts.time_features(stamp, "a").shape == (1, 0)
    with pytest.raises(ValueError, match="freq='fortnight'"):
        ts.time_features(stamp, "fortnight")


def test_time_features_stay_in_range(etth1_raw):
    marks = ts.time_features(etth1_raw["date"], "h")
    assert marks.shape == (17420, 4) and marks.dtype == np.float32
    assert marks.min() >= -0.5 and marks.max() <= 0.5


# ---------------------------------------------------------------- splits and windows

def test_etth1_standard_splits(etth1, etth1_raw):
    # thuml's Dataset_ETT_hour gives 8449 / 2785 / 2785 windows for 96 -> 96.
    assert (len(etth1.train), len(etth1.val), len(etth1.test)) == (8449, 2785, 2785)
    assert etth1.borders == {"train": (0, 8640), "val": (8544, 11520), "test": (11424, 14400)}
    assert etth1.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"] and etth1.freq == "h"
    raw = etth1_raw[etth1.columns].to_numpy()
    np.testing.assert_allclose(etth1.scaler.mean_, raw[:8640].mean(axis=0))
    np.testing.assert_allclose(etth1.scaler.scale_, raw[:8640].std(axis=0))       # ddof 0, like sklearn
    expected_test = (raw[11424:14400] - raw[:8640].mean(0)) / raw[:8640].std(0)
    np.testing.assert_allclose(etth1.test.data.numpy(), expected_test, rtol=1e-6, atol=1e-6)
    assert etth1.dates["test"][0] == pd.Timestamp(etth1_raw["date"][11424])
    restored = etth1.inverse_transform(etth1.test.data.double().numpy())
    np.testing.assert_allclose(restored, raw[11424:14400], rtol=1e-6, atol=1e-5)


def test_windows_index_the_split(etth1):
    test = etth1.test
    item = test[100]
    torch.testing.assert_close(item["x"], test.data[100:196])
    torch.testing.assert_close(item["y"], test.data[196:292])
    torch.testing.assert_close(item["y_mark"], test.marks[196:292])
    last = test[len(test) - 1]
    torch.testing.assert_close(last["y"][-1], test.data[-1])
    with pytest.raises(IndexError):
        test[len(test)]
    indices = [5, 0, 2784, 100]
    batch = test.__getitems__(indices)
    assert batch["x"].shape == (4, 96, 7) and batch["x_mark"].shape == (4, 96, 4) and batch["y"].shape == (4, 96, 7)
    for row, index in enumerate(indices):
        for key in batch:
            torch.testing.assert_close(batch[key][row], test[index][key])
    # x and y come from one gather: they share one storage block.
    assert batch["x"].untyped_storage().data_ptr() == batch["y"].untyped_storage().data_ptr()


def test_label_len_gives_thuml_decoder_span(ett_dir):
    splits = ts.make_splits("ETTh1", root=ett_dir, seq_len=96, pred_len=24, label_len=48)
    item = splits.val[3]
    assert item["y"].shape == (72, 7)
    torch.testing.assert_close(item["y"][:48], item["x"][-48:])
    torch.testing.assert_close(item["y"], splits.val.data[3 + 48:3 + 120])


def test_loader_batches_equal_items(etth1):
    loader = ts.make_loader(etth1.val, batch_size=64, shuffle=False)
    batches = list(loader)
    assert len(batches) == -(-2785 // 64)
    torch.testing.assert_close(batches[1]["x"][5], etth1.val[64 + 5]["x"])
    assert sum(len(b["x"]) for b in batches) == 2785


def test_custom_protocol_and_features(ett_dir):
    exchange = ts.make_splits("exchange_rate", root=ett_dir, seq_len=96, pred_len=96)
    n = 7588
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    assert exchange.borders == {"train": (0, num_train), "val": (num_train - 96, n - num_test),
                                "test": (n - num_test - 96, n)}
    assert (len(exchange.train), len(exchange.val), len(exchange.test)) == (5120, 665, 1422)
    assert exchange.freq == "d" and exchange.train.n_marks == 3
    assert ts.make_splits("exchange_rate", root=ett_dir, freq="h").train.n_marks == 4

    ili = ts.make_splits(ett_dir / "national_illness.csv", seq_len=36, pred_len=24, features="MS",
                         target="%UNWEIGHTED ILI")
    assert ili.columns[-1] == "%UNWEIGHTED ILI" and len(ili.columns) == 7
    single = ts.make_splits("national_illness", root=ett_dir, seq_len=36, pred_len=24, features="S")
    assert single.columns == ["OT"] and single.train.n_channels == 1
    raw = pd.read_csv(ett_dir / "national_illness.csv")["OT"].to_numpy()
    np.testing.assert_allclose(single.inverse_transform(single.train.data.double().numpy())[:, 0],
                               raw[:int(966 * 0.7)], rtol=1e-6)

    ratios = ts.make_splits("ETTh1", root=ett_dir, split=(0.6, 0.2, 0.2))
    assert ratios.borders["train"] == (0, int(17420 * 0.6))
    weather = ts.make_splits("WTH", root=ett_dir, target="WetBulbCelsius", scale=False)
    assert weather.scaler is None and weather.columns[-1] == "WetBulbCelsius"


def test_split_errors(ett_dir):
    with pytest.raises(ValueError, match="features='X'"):
        ts.make_splits("ETTh1", root=ett_dir, features="X")
    with pytest.raises(ValueError, match="split="):
        ts.make_splits("ETTh1", root=ett_dir, split=(0.5, 0.5))
    with pytest.raises(ValueError, match="fewer than seq_len"):
        ts.make_splits("national_illness", root=ett_dir, seq_len=104, pred_len=104)   # val: 97 + 104 rows


# ---------------------------------------------------------------- finding and downloading files

def test_resolver_search_order(ett_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MTP_DATA_DIR", str(ett_dir.parent))
    assert ts.resolve_dataset("ETTh1") == ett_dir / "ETTh1.csv"
    assert ts.resolve_dataset("WTH", root=ett_dir) == ett_dir / "WTH.csv"
    monkeypatch.delenv("MTP_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="WTH.csv not found; put it in one of") as err:
        ts.resolve_dataset("WTH", root=tmp_path)
    assert str(tmp_path / "cache") in str(err.value)


def test_download_verifies_hash_and_is_atomic(ett_dir, tmp_path, monkeypatch):
    source = ett_dir / "ETTh1.csv"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == ts.ETT_URLS["ETTh1"][1]
    cache = tmp_path / "cache" / "data" / "ett"
    monkeypatch.setenv("MTP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MTP_DATA_DIR", raising=False)
    monkeypatch.setitem(ts.ETT_URLS, "ETTh1", (source.as_uri(), ts.ETT_URLS["ETTh1"][1]))
    path = ts.resolve_dataset("ETTh1")
    assert path == cache / "ETTh1.csv" and path.read_bytes() == source.read_bytes()

    monkeypatch.setitem(ts.ETT_URLS, "ETTh2", (source.as_uri(), "0" * 64))
    with pytest.raises(DownloadError, match="sha256 is .* expected 0000"):
        ts.resolve_dataset("ETTh2")
    assert sorted(p.name for p in cache.iterdir()) == ["ETTh1.csv"]     # no partial file left behind

    monkeypatch.setitem(ts.ETT_URLS, "ETTm1", ((tmp_path / "missing.csv").as_uri(), None))
    with pytest.raises(DownloadError, match="could not download .* put it at one of: .*ETTm1.csv"):
        ts.resolve_dataset("ETTm1")
    with pytest.raises(FileNotFoundError, match="download=False"):
        ts.resolve_dataset("ETTm2", download=False)


# ---------------------------------------------------------------- long format / pytorch-forecasting

@pytest.fixture(scope="module")
def exchange_long(ett_dir):
    wide = pd.read_csv(ett_dir / "exchange_rate.csv")
    return wide.melt(id_vars="date", var_name="currency", value_name="rate")


def test_long_format_data_windows(exchange_long):
    data = ts.LongFormatData(exchange_long, series_col="currency", time_col="date", target="rate",
                             seq_len=96, pred_len=24, target_normalizer=None)
    steps = 7588
    assert data.val_start == round((steps - 1) * 0.8)
    assert len(data.training) == 8 * (data.val_start - 96 - 24 + 1)
    assert len(data.validation) == 8 * (steps - 24 + 1 - data.val_start)
    x, (y, _) = next(iter(data.train_dataloader(batch_size=16)))
    assert x["encoder_cont"].shape == (16, 96, 1) and y.shape == (16, 24)
    # Every window reproduces the CSV values of its currency at its dates.
    wide = exchange_long.pivot(index="date", columns="currency", values="rate")
    wide = wide.set_index(pd.to_datetime(wide.index)).sort_index()
    names = data.training.get_parameters()["categorical_encoders"]["__group_id__currency"].classes_
    by_code = {code: name for name, code in names.items()}
    for row in range(4):
        currency = by_code[int(x["groups"][row, 0])]
        start = int(x["decoder_time_idx"][row, 0])
        series = wide[currency].to_numpy()
        np.testing.assert_allclose(x["encoder_target"][row].numpy(), series[start - 96:start], rtol=1e-6)
        np.testing.assert_allclose(y[row].numpy(), series[start:start + 24], rtol=1e-6)
    xv, _ = next(iter(data.val_dataloader(batch_size=8)))
    assert int(xv["decoder_time_idx"][:, 0].min()) >= data.val_start


def test_long_format_data_errors(exchange_long):
    kwargs = {"series_col": "currency", "time_col": "date", "target": "rate", "seq_len": 96, "pred_len": 24}
    with pytest.raises(ValueError, match=r"columns \['price'\] not found"):
        ts.LongFormatData(exchange_long, **{**kwargs, "target": "price"})
    gappy = exchange_long.drop(index=exchange_long.index[(exchange_long["currency"] == "3")][100])
    with pytest.raises(ValueError, match="series '3' jumps to time_idx 101"):
        ts.LongFormatData(gappy, **kwargs)
    holes = exchange_long.copy()
    holes.loc[holes.index[50], "rate"] = np.nan
    with pytest.raises(ValueError, match="series '0' time_idx 50 column 'rate'"):
        ts.LongFormatData(holes, **kwargs)
    with pytest.raises(ValueError, match="val_start=50"):
        ts.LongFormatData(exchange_long, **kwargs, val_start=50)
