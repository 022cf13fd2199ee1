"""SwinUNETR against MONAI's fixtures (../shared/fixtures/swinunetr) and against MONAI's own model, plus the 3D
window kernels (mtp.kernels.window) it runs on."""
import json

import pytest
import torch

from mtp.backbones.swinunetr import PATCH_MERGING_ORDERS, SwinUNETR
from mtp.kernels import relative_position_index, shifted_window_region_ids, window_attention, \
    window_attention_reference
from mtp.kernels.window import region_mask, window_region_ids

pytestmark = pytest.mark.usefixtures("one_thread")

MANIFESTS = {  # fixture manifest -> our preset
    "SwinUNETR_BraTS21_f48": "swinunetr_brats21",
    "SwinUNETR_BTCV_Base_f48": "swinunetr_btcv_base",
    "SwinUNETR_BTCV_Small_f24": "swinunetr_btcv_small",
    "SwinUNETR_BTCV_Tiny_f12": "swinunetr_btcv_tiny",
}
OUR_KWARGS = ("in_channels", "out_channels", "feature_size", "depths", "num_heads", "window_size", "patch_size",
              "mlp_ratio", "qkv_bias", "normalize", "drop_rate", "attn_drop_rate", "dropout_path_rate",
              "use_checkpoint")


def our_kwargs(monai_kwargs: dict, patch_merging: str) -> dict:
    """Our constructor arguments for MONAI's; the MONAI options we hard-wire must have the values we implement."""
    assert monai_kwargs["norm_name"] == "instance" and monai_kwargs["spatial_dims"] == 3
    assert not monai_kwargs["use_v2"] and not monai_kwargs["patch_norm"]
    return {**{k: monai_kwargs[k] for k in OUR_KWARGS}, "patch_merging": patch_merging}


def entries(model):
    return [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in model.state_dict().items()]


@pytest.fixture(scope="module")
def folder(fixtures_dir):
    path = fixtures_dir / "swinunetr"
    if not path.is_dir():
        pytest.skip(f"shared fixture missing: {path}")
    return path


@pytest.fixture(scope="module")
def tiny(folder):
    from safetensors.torch import load_file
    side = json.loads((folder / "swinunetr_tiny.json").read_text())
    return (side, load_file(folder / "swinunetr_tiny_state_dict.safetensors"),
            load_file(folder / "swinunetr_tiny_io.safetensors"))


def tiny_model(tiny, patch_merging):
    side, state, _ = tiny
    model = SwinUNETR(**our_kwargs(side["constructor_kwargs"], patch_merging)).eval()
    model.load_state_dict(state, strict=True)
    return model


# MONAI's SwinUNETR calls einops.rearrange only for these channel moves; einops is not a dependency of ours, so
# where it is missing the reference runs with the same permutations done by torch.
_CHANNEL_MOVES = {"b c d h w -> b d h w c": (0, 2, 3, 4, 1), "b d h w c -> b c d h w": (0, 4, 1, 2, 3),
                  "n c d h w -> n d h w c": (0, 2, 3, 4, 1), "n d h w c -> n c d h w": (0, 4, 1, 2, 3)}


def _rearrange(x, pattern):
    return x.permute(*_CHANNEL_MOVES[pattern])


def monai_tiny(tiny, downsample):
    monai_nets = pytest.importorskip("monai.networks.nets")
    try:
        import einops  # noqa: F401
    except ImportError:
        import monai.networks.nets.swin_unetr as swin_module
        swin_module.rearrange = _rearrange
    side, state, _ = tiny
    model = monai_nets.SwinUNETR(**{**side["constructor_kwargs"], "downsample": downsample}).eval()
    model.load_state_dict(state, strict=True)
    return model


# ---- state dict layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", sorted(MANIFESTS))
def test_presets_have_monais_state_dict_layout(folder, config):
    from mtp.registry import BACKBONES
    manifest = json.loads((folder / f"manifest_{config}.json").read_text())
    spec = BACKBONES.get(MANIFESTS[config])
    assert spec.tasks == ("medical_segmentation",) and spec.family == "swinunetr"
    assert spec.kwargs["patch_merging"] == "legacy"  # the order the released checkpoints were trained with
    expected = our_kwargs(manifest["constructor_kwargs"], "legacy")
    assert {k: v for k, v in expected.items() if k in spec.kwargs} == spec.kwargs
    with torch.device("meta"):
        model = spec.build()
    assert entries(model) == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    assert all(w.filename and w.page and w.key == "state_dict" for w in spec.weights.values())
    assert [w.file_name for w in spec.weights.values()] == manifest["checkpoint"]["files"]


def test_tiny_layout_matches_manifest(folder, tiny):
    manifest = json.loads((folder / "manifest_swinunetr_tiny.json").read_text())
    assert entries(tiny_model(tiny, "legacy")) == manifest["state_dict"]


# ---- numeric parity ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch_merging, suffix, hidden", [("merging", "", (1, 2, 3, 4)),
                                                           ("legacy", "_legacy_merging", (1, 4))])
def test_tiny_fixture_outputs(tiny, patch_merging, suffix, hidden):
    side, _, io = tiny
    atol = side["suggested_atol_by_tensor"]
    model = tiny_model(tiny, patch_merging)
    with torch.no_grad():
        out = model(io["input"])
        states = model.swinViT(io["input"], normalize=True)
    torch.testing.assert_close(out, io["output" + suffix], rtol=0, atol=atol["output" + suffix])
    for k in hidden:
        name = f"hidden_state_{k}{suffix}"
        torch.testing.assert_close(states[k], io[name], rtol=0, atol=atol[name])
    if patch_merging == "merging":
        with torch.no_grad():
            bottleneck = model.encoder10(io["hidden_state_4"])
        torch.testing.assert_close(bottleneck, io["bottleneck_encoder10"], rtol=0,
                                   atol=atol["bottleneck_encoder10"])


def test_orders_are_what_monai_names_them():
    assert PATCH_MERGING_ORDERS["merging"] != PATCH_MERGING_ORDERS["legacy"]
    assert sorted(PATCH_MERGING_ORDERS["merging"]) == sorted(PATCH_MERGING_ORDERS["mergingv2"])
    assert len(set(PATCH_MERGING_ORDERS["legacy"])) == 6  # two sub-volumes repeated, as MONAI <= 1.4 did
    assert SwinUNETR(feature_size=12).patch_merging == "legacy"


@pytest.mark.parametrize("downsample", ["merging", "mergingv2"])
def test_matches_monai_swinunetr_on_another_shape(tiny, downsample):
    """Depth 64 over 32 x 32: shrunk windows and shifts on other axes than in the fixture; batch 1."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 64, 32, 32)
    ours, theirs = tiny_model(tiny, downsample), monai_tiny(tiny, downsample)
    with torch.no_grad():
        out, ref = ours(x), theirs(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-4)


def test_gradients_match_monai(tiny):
    """Training mode, backward through the window kernel (the bias tables' gradients come through the index).

    In float64: with O(1) weights and a 2-voxel bottleneck, float32 rounding alone moves some float32 gradients
    by 1%; the window kernel accumulates bias-table gradients in float32, hence the 1e-5 relative bound.
    """
    torch.manual_seed(1)
    x = torch.randn(1, 4, 32, 32, 64, dtype=torch.float64)
    weight = torch.randn(1, 3, 32, 32, 64, dtype=torch.float64)
    ours, theirs = tiny_model(tiny, "merging").train().double(), monai_tiny(tiny, "merging").train().double()
    for model in (ours, theirs):
        (model(x) * weight).sum().backward()
    grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        ref = grads[name].grad
        torch.testing.assert_close(p.grad, ref, rtol=0, atol=1e-5 * ref.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


def test_gradient_checkpointing_changes_no_gradient(tiny):
    side, state, _ = tiny
    torch.manual_seed(3)
    x = torch.randn(1, 4, 32, 32, 64)
    grads = []
    for use_checkpoint in (False, True):
        model = SwinUNETR(**{**our_kwargs(side["constructor_kwargs"], "merging"), "use_checkpoint": use_checkpoint})
        model.load_state_dict(state, strict=True)
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)


def test_runs_under_monais_sliding_window(tiny):
    """The fixture's BraTS test.py settings: MONAI's inferer with our model as the predictor."""
    inferers = pytest.importorskip("monai.inferers")
    side, _, io = tiny
    model = tiny_model(tiny, "merging")
    with torch.no_grad():
        logits = inferers.sliding_window_inference(io["sw_input"], roi_size=(32, 64, 64), sw_batch_size=1,
                                                   predictor=model, overlap=0.6)
    torch.testing.assert_close(logits, io["sw_logits"], rtol=0, atol=side["suggested_atol_by_tensor"]["sw_logits"])


# ---- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, message", [
    ((4, 32, 32, 64), r"volumes \[B, C, D, H, W\]"),
    ((1, 3, 32, 32, 64), "built for 4 input channels, got 3"),
    ((1, 4, 32, 48, 64), r"\(32, 48, 64\) must be a positive multiple of 32"),
    ((1, 4, 32, 32, 32), "single voxel at 1/32"),
])
def test_rejects_bad_input(shape, message):
    model = SwinUNETR(feature_size=12).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_merging="v2"), "patch_merging must be one of"),
    (dict(feature_size=16), "multiple of 12, got 16"),
    (dict(depths=(2, 2, 2)), "4 entries"),
    (dict(num_heads=(5, 6, 12, 24)), "width 12 is not divisible by num_heads 5"),
])
def test_rejects_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SwinUNETR(**{"feature_size": 12, **kwargs})


def test_rejects_a_checkpoint_with_another_index(tiny):
    _, state, _ = tiny
    key = "swinViT.layers2.0.blocks.1.attn.relative_position_index"
    broken = {**state, key: state[key].flip(0)}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SwinUNETR(feature_size=12).load_state_dict(broken, strict=True)


# ---- 3D window kernels -------------------------------------------------------------------------------------

def loop_index(window):
    """Relative position index by definition, one token pair at a time."""
    coords = [(d, h, w) for d in range(window[0]) for h in range(window[1]) for w in range(window[2])]
    sides = [2 * n - 1 for n in window]
    return torch.tensor([[((a[0] - b[0] + window[0] - 1) * sides[1] + a[1] - b[1] + window[1] - 1) * sides[2]
                          + a[2] - b[2] + window[2] - 1 for b in coords] for a in coords])


def test_relative_position_index_3d():
    for window in ((2, 3, 4), (3, 1, 2)):
        assert torch.equal(relative_position_index(window), loop_index(window))
    assert torch.equal(relative_position_index((5, 5)), relative_position_index(5))  # 2D tuple == HAT's int form
    nets = pytest.importorskip("monai.networks.nets.swin_unetr")
    assert torch.equal(relative_position_index((7, 7, 7)), nets.WindowAttention(12, 3, (7, 7, 7)).relative_position_index)
    with pytest.raises(ValueError, match="positive int or a tuple"):
        relative_position_index((7, 0, 7))


def region_ids_by_slices(size, window, shift):
    """Region ids as Swin fills them: one number per (band, band, band) of slices, windows cut afterwards."""
    ids = torch.zeros(size, dtype=torch.long)
    bands = [[slice(0, n - w), slice(n - w, n - s), slice(n - s, n)] if s else [slice(0, n)]
             for n, w, s in zip(size, window, shift)]
    for number, (d, h, w) in enumerate((d, h, w) for d in bands[0] for h in bands[1] for w in bands[2]):
        ids[d, h, w] = number
    grid = ids.view(size[0] // window[0], window[0], size[1] // window[1], window[1], size[2] // window[2], window[2])
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(-1, window[0] * window[1] * window[2])


@pytest.mark.parametrize("size, window, shift", [((14, 21, 14), (7, 7, 7), (3, 3, 3)),
                                                 ((4, 14, 14), (4, 7, 7), (0, 3, 3)),
                                                 ((14, 6, 21), (7, 6, 7), (3, 0, 3))])
def test_window_region_ids_3d(size, window, shift):
    ids = window_region_ids(size, window, shift)
    assert torch.equal(region_mask(ids), region_mask(region_ids_by_slices(size, window, shift)))
    nets = pytest.importorskip("monai.networks.nets.swin_unetr")
    assert torch.equal(region_mask(ids), nets.compute_mask(list(size), window, shift, None))


def test_window_region_ids_2d_equal_hats():
    assert torch.equal(window_region_ids((40, 24), (8, 8), (4, 4)), shifted_window_region_ids(40, 24, 8, 4))


@pytest.mark.parametrize("args, message", [(((14, 15, 14), (7, 7, 7), (3, 3, 3)), "not a multiple"),
                                           (((14, 14, 14), (7, 7, 7), (3, 7, 3)), r"shift_size must be in \[0"),
                                           (((14, 14), (7, 7, 7), (3, 3, 3)), "one entry per axis")])
def test_window_region_ids_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        window_region_ids(*args)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_3d_matches_reference(shifted):
    """Batch 2, a shrunk (4, 7, 7) window reading the corner of the 7^3 index, as SwinUNETR's stage 3 does."""
    torch.manual_seed(2)
    window, size, heads, dim = (4, 7, 7), (4, 14, 14), 3, 8
    n = 4 * 7 * 7
    windows = 2 * (size[1] // 7) * (size[2] // 7)
    q, k, v = (torch.randn(windows, heads, n, dim) for _ in range(3))
    table = torch.randn(13 ** 3, heads)
    index = relative_position_index((7, 7, 7))[:n, :n]
    regions = window_region_ids(size, window, (0, 3, 3)) if shifted else None
    out = window_attention(q, k, v, table, index, shift_mask=regions)
    ref = window_attention_reference(q, k, v, table, index, shift_mask=regions)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
