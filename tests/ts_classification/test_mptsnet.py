"""MPTSNet against the official-code fixtures in ../shared/fixtures/mptsnet, and its period search on the real
archive files in ../shared/data/tsc."""
import json

import numpy as np
import pytest
import torch

from mtp.backbones import mptsnet as mp
from mtp.backbones.mptsnet import MPTSNet, config_from_state_dict, find_periods, period_amplitudes

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["mptsnet_tiny", "mptsnet_tiny_flag"]
MANIFESTS = ["BasicMotions", "JapaneseVowels", "GunPoint"]


@pytest.fixture(scope="module")
def folder(fixtures_dir):
    return fixtures_dir / "mptsnet"


def _tiny(folder, name):
    from safetensors.torch import load_file
    meta = json.loads((folder / f"{name}.json").read_text())
    return (meta, load_file(folder / f"{name}_state_dict.safetensors"),
            load_file(folder / f"{name}_io.safetensors"))


def _manifest(folder, name):
    return json.loads((folder / f"manifest_{name}.json").read_text())


def _loaded(meta, state):
    model = MPTSNet(**meta["constructor_kwargs"]).eval()
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("name", TINY)
def test_matches_official_intermediates_and_output(folder, name):
    meta, state, io = _tiny(folder, name)
    model = _loaded(meta, state)
    assert [k for k in model.state_dict()] == [k for k, _ in meta["state_dict_order"]]
    seen = {"amplitudes": []}
    for block in model.model:
        block.register_forward_pre_hook(
            lambda mod, args: seen["amplitudes"].append(period_amplitudes(args[0], mod.bins)))
    model.enc_embedding.register_forward_hook(lambda mod, args, out: seen.__setitem__("embedding", out))
    model.model[0].register_forward_hook(lambda mod, args, out: seen.__setitem__("block0_output", out))
    with torch.no_grad():
        out = model(io["input"])
    atol = meta["suggested_atol"]
    torch.testing.assert_close(torch.stack(seen["amplitudes"]), io["amplitudes"], rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["embedding"], io["embedding"], rtol=0, atol=atol)
    torch.testing.assert_close(seen["block0_output"], io["block0_output"], rtol=0, atol=atol)
    torch.testing.assert_close(out, io["output"], rtol=0, atol=atol)


@pytest.mark.parametrize("name", TINY)
def test_batch_of_one_equals_batched(folder, name):
    meta, state, io = _tiny(folder, name)
    model = _loaded(meta, state)
    with torch.no_grad():
        batched = model(io["input"])
        single = torch.cat([model(x[None]) for x in io["input"]])
    torch.testing.assert_close(single, batched, rtol=0, atol=2e-6)


def test_float64_matches(folder):
    """The official `.float()` head cast is not copied, so float64 runs; its gap to the float32 reference is
    the fixture's measured float32-vs-float64 noise."""
    meta, state, io = _tiny(folder, "mptsnet_tiny")
    model = MPTSNet(**meta["constructor_kwargs"]).double().eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(io["input"].double())
    assert out.dtype == torch.float64
    gap = (out - io["output"].double()).abs().max().item()
    assert gap == pytest.approx(meta["float32_vs_float64_max_abs_diff"], rel=0.05, abs=2e-7)


def test_mask_is_ignored(folder):
    meta, state, io = _tiny(folder, "mptsnet_tiny")
    model = _loaded(meta, state)
    mask = torch.zeros(io["input"].shape[0], io["input"].shape[2], dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(model(io["input"], mask=mask), model(io["input"]))


def test_attention_goes_through_kernel_dispatch(folder, monkeypatch):
    meta, state, io = _tiny(folder, "mptsnet_tiny")
    calls, dispatch = [], mp.attention

    def counting_attention(q, k, v, **kwargs):
        calls.append(tuple(q.shape))
        return dispatch(q, k, v, **kwargs)

    monkeypatch.setattr(mp, "attention", counting_attention)
    model = _loaded(meta, state)
    with torch.no_grad():
        out = model(io["input"])
    torch.testing.assert_close(out, io["output"], rtol=0, atol=meta["suggested_atol"])
    # per block: the time-point transformer (T+1 tokens, E/4 wide) and one window transformer per period
    # (ceil(T/p)+1 tokens, Et/4 wide); T=21, periods 6, 7, 4
    per_block = [(3, 4, 22, 4), (3, 4, 5, 8), (3, 4, 4, 8), (3, 4, 7, 8)]
    assert calls == per_block * 2


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_every_used_parameter(folder, name):
    meta, state, io = _tiny(folder, name)
    model = _loaded(meta, state).train()
    torch.manual_seed(0)
    model(io["input"]).logsumexp(-1).sum().backward()
    unused = {f"model.{i}.transformer.embedding.{p}" for i in range(2) for p in ("weight", "bias")}
    for key, param in model.named_parameters():
        if meta["constructor_kwargs"]["flag"] and key in unused:
            assert param.grad is None, key          # the official flag path never applies this Linear
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
        if "cnn.2.CBAMBlock.channel_attention" not in key:  # E//16 = 1 hidden unit: its ReLU may be dead
            assert param.grad.abs().sum() > 0, key


# ---------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name", MANIFESTS)
def test_state_dict_matches_manifest(folder, name):
    manifest = _manifest(folder, name)
    with torch.device("meta"):
        model = MPTSNet(**manifest["constructor_kwargs"])
    ours = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert ours == [[key, shape] for key, shape, _ in manifest["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["total_state_dict_numel"]
    assert [[k, list(b.shape)] for k, b in model.named_buffers()] == manifest["persistent_buffers"]


@pytest.mark.parametrize("name", TINY)
def test_fresh_tables_equal_official_buffers(folder, name):
    meta, state, _ = _tiny(folder, name)
    model = MPTSNet(**meta["constructor_kwargs"])
    for key, buffer in model.named_buffers():
        assert torch.equal(buffer, state[key]), key


@pytest.mark.parametrize("name", TINY)
def test_config_from_tiny_state_dict(folder, name):
    meta, state, _ = _tiny(folder, name)
    assert config_from_state_dict(state) == meta["constructor_kwargs"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_config_from_manifest_shapes(folder, name):
    manifest = _manifest(folder, name)
    state = {key: torch.empty(shape, device="meta") for key, shape, _ in manifest["state_dict"]}
    assert config_from_state_dict(state) == manifest["constructor_kwargs"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="periods"):
        MPTSNet([], 3, 21, 5, embed_dim=16, embed_dim_t=32)
    with pytest.raises(ValueError, match="embed_dim=8"):
        MPTSNet([4], 3, 21, 5, embed_dim=8, embed_dim_t=32)
    model = MPTSNet([4], 3, 21, 5, embed_dim=16, embed_dim_t=32, ff_dim=8)
    with pytest.raises(ValueError, match=r"\(B, 3, 21\)"):
        model(torch.zeros(2, 3, 20))


# ---------------------------------------------------------------------------------------------- period search
def _load_ts(path):
    """A .ts file as (N, C, T), NaN-padded at the end to the file's longest series (official loader)."""
    from aeon.datasets import load_from_ts_file
    x, _ = load_from_ts_file(str(path))
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    out = np.full((len(x), x[0].shape[0], max(s.shape[1] for s in x)), np.nan)
    for i, s in enumerate(x):
        out[i, :, : s.shape[1]] = s
    return out


def _official_train_x(data_dir, sub, name, pad_to_test=True):
    train = _load_ts(data_dir / "tsc" / sub / f"{name}_TRAIN.ts")
    if pad_to_test:
        length = _load_ts(data_dir / "tsc" / sub / f"{name}_TEST.ts").shape[2]
        if length > train.shape[2]:
            train = np.concatenate([train, np.full(train.shape[:2] + (length - train.shape[2],), np.nan)], axis=2)
    return np.nan_to_num(train, nan=0.0)


@pytest.mark.parametrize("sub,name", [("multivariate", "BasicMotions"), ("multivariate", "JapaneseVowels"),
                                      ("univariate", "GunPoint")])
def test_find_periods_on_archive_files(folder, data_dir, sub, name):
    manifest = _manifest(folder, name)
    train = _official_train_x(data_dir, sub, name)
    assert list(train.shape) == manifest["data_shapes"]["train"]
    assert find_periods(train) == manifest["constructor_kwargs"]["periods"]
    config = MPTSNet.data_config(train)
    kwargs = manifest["constructor_kwargs"]
    assert config == {"periods": kwargs["periods"], "embed_dim": kwargs["embed_dim"],
                      "embed_dim_t": kwargs["embed_dim_t"]}


def test_japanese_vowels_needs_padding_to_test_length(data_dir):
    """Pitfall 6: padding train only to its own longest series (26) changes the periods."""
    train = _official_train_x(data_dir, "multivariate", "JapaneseVowels", pad_to_test=False)
    assert train.shape[2] == 26
    assert find_periods(train) == [13, 9, 6, 5, 3]


def _tone(length, freq_bin, offset=3.0):
    t = np.arange(length)
    return (np.cos(2 * np.pi * freq_bin * t / length) + offset)[None, None, :]


@pytest.mark.parametrize("length,freq_bin,period", [
    (29, 2, 14),      # 14.5 -> 14: half to even (half-up would give 15)
    (150, 4, 38),     # 37.5 -> 38
    (30, 4, 8),       # 7.5 -> 8
    (18, 4, 4),       # 4.5 -> 4
    (749, 214, 3),    # (1/f)*N = 3.4999999999999996 -> 3, while N/f = 3.5 -> 4
    (49, 1, 49),      # numpy's bin 1 is 0.9999999999999999 for N=49: it survives the f == 1 filter
])
def test_find_periods_rounding(length, freq_bin, period):
    assert find_periods(_tone(length, freq_bin))[0] == period


def test_find_periods_drops_bin_one_for_clean_lengths():
    assert 50 not in find_periods(_tone(50, 1))
    assert round(749 / 214) == 4   # the other formula really differs here


def test_find_periods_short_series_and_order():
    assert sorted(find_periods(_tone(8, 2))) == [3, 4]    # bins 2, 3 only
    assert find_periods(np.ones((2, 3, 4))) == []         # bins 0, 1 only: nothing left
    x = 2 * _tone(64, 4) + _tone(64, 8, 0) * 0.5 + _tone(64, 2, 0) * 0.25
    assert find_periods(x, k=3) == [16, 8, 32]          # amplitude order, not sorted
    # samples and channels are averaged before the FFT
    stacked = np.concatenate([_tone(64, 4), _tone(64, 4, 0) * 0 + 3.0], axis=1)
    assert find_periods(stacked)[0] == 16


def test_amplitude_bin_ties_take_the_lower_bin():
    assert mp.amplitude_bin(21, 6) == 3       # 3.5: bins 3 and 4 tie
    assert mp.amplitude_bin(30, 4) == 7       # 7.5
    assert mp.amplitude_bin(21, 4) == 5       # 5.25
    assert mp.amplitude_bin(10, 2) == 4       # 5 is past the last bin T//2-1
