"""iTransformer against the official-code fixtures in ../shared/fixtures/itransformer and on real ETTh1."""
import json

import pytest
import torch
import torch.nn.functional as F

from mtp.backbones import itransformer as itr
from mtp.backbones.itransformer import ITransformer


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    from safetensors.torch import load_file
    folder = fixtures_dir / "itransformer"
    meta = json.loads((folder / "itransformer_small.json").read_text())
    return (meta["configs"], load_file(folder / "itransformer_small_state_dict.safetensors"),
            load_file(folder / "itransformer_small_io.safetensors"))


def _tolerance(ref):
    return 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("use_norm", [True, False])
@pytest.mark.parametrize("with_marks", [True, False])
def test_matches_official_outputs(fixture, use_norm, with_marks):
    configs, state, io = fixture
    model = ITransformer.from_configs({**configs, "use_norm": use_norm}).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(io["x_enc"], io["x_mark_enc"] if with_marks else None)
    ref = io[f"output_{'with' if with_marks else 'no'}_mark_{'norm' if use_norm else 'nonorm'}"]
    torch.testing.assert_close(out, ref, rtol=0, atol=_tolerance(ref))


def test_matches_official_attention_maps(fixture):
    configs, state, io = fixture
    model = ITransformer.from_configs({**configs, "output_attention": True}).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out, maps = model(io["x_enc"], io["x_mark_enc"])
    torch.testing.assert_close(out, io["output_with_mark_norm"], rtol=0, atol=_tolerance(io["output_with_mark_norm"]))
    for layer, attn in enumerate(maps):
        ref = io[f"attn_layer{layer}_with_mark_norm"]
        assert attn.shape == (2, 4, 11, 11)          # 7 variates + 4 time-feature tokens
        torch.testing.assert_close(attn, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("horizon", [96, 192, 336, 720])
def test_official_etth1_manifests(fixtures_dir, horizon):
    manifest = json.loads((fixtures_dir / "itransformer" / f"manifest_ETTh1_96_{horizon}.json").read_text())
    model = ITransformer.from_configs(manifest["configs"])
    ours = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert ours == [[key, shape] for key, shape, _ in manifest["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    assert list(model.buffers()) == []


def test_attention_goes_through_kernel_dispatch(fixture, monkeypatch):
    configs, state, io = fixture
    calls, dispatch = [], itr.attention

    def counting_attention(q, k, v, **kwargs):
        calls.append((q.shape, kwargs["scale"]))
        return dispatch(q, k, v, **kwargs)

    monkeypatch.setattr(itr, "attention", counting_attention)
    model = ITransformer.from_configs(configs).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        out = model(io["x_enc"], io["x_mark_enc"])
    torch.testing.assert_close(out, io["output_with_mark_norm"], rtol=0, atol=_tolerance(io["output_with_mark_norm"]))
    # Layer 0 attends over all 11 tokens; the last layer only needs the 7 variate queries.
    assert [shape for shape, _ in calls] == [(2, 4, 11, 8), (2, 4, 7, 8)]
    assert all(scale == pytest.approx(8 ** -0.5) for _, scale in calls)


def test_from_configs_reads_namespace_and_ignores_unused_keys(fixture):
    from types import SimpleNamespace
    configs, state, _ = fixture
    model = ITransformer.from_configs(SimpleNamespace(**configs, root_path="./data", batch_size=32))
    model.load_state_dict(state, strict=True)
    assert model.pred_len == 48 and model.use_norm is True


def test_bad_input_is_named():
    model = ITransformer(seq_len=96, pred_len=24, d_model=16, n_heads=2, d_ff=16, e_layers=1)
    with pytest.raises(ValueError, match=r"x: expected \[B, 96, N\]"):
        model(torch.zeros(2, 48, 7))
    with pytest.raises(ValueError, match="x_mark"):
        model(torch.zeros(2, 96, 7), torch.zeros(2, 95, 4))
    with pytest.raises(ValueError, match="not divisible"):
        ITransformer(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="activation='tanh'"):
        ITransformer(activation="tanh")


def test_trains_on_real_etth1(data_dir):
    from mtp.datasets.forecasting import make_loader, make_splits
    torch.manual_seed(0)
    torch.set_num_threads(1)
    splits = make_splits("ETTh1", root=data_dir / "ett", seq_len=96, pred_len=96)
    batch = next(iter(make_loader(splits.train, batch_size=32, shuffle=True)))
    model = ITransformer(seq_len=96, pred_len=96, d_model=64, n_heads=4, d_ff=64, e_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = model(batch["x"], batch["x_mark"])
        assert out.shape == batch["y"].shape
        loss = F.mse_loss(out, batch["y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch["x"], batch["x_mark"]), model(batch["x"], batch["x_mark"]))
