"""HAT parity with the official XPixelGroup/HAT: state-dict layout of the 9 released configs and numeric
output of the tiny fixture model (shared/fixtures/hat, made with the unmodified official code)."""
import json

import pytest
import torch
from mtp.backbones.hat import HAT, HAT_VARIANTS, overlap_window_size, pad_to_multiple
from mtp.kernels import overlapping_relative_position_index, relative_position_index

CONFIGS = [f"{name}_SRx{scale}" for name in ("HAT-S", "HAT", "HAT-L") for scale in (2, 3, 4)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hat_dir(fixtures_dir):
    return fixtures_dir / "hat"


@pytest.fixture(scope="module")
def tiny(hat_dir):
    from safetensors.torch import load_file
    meta = json.loads((hat_dir / "hat_tiny_x4.json").read_text())
    return (meta["constructor_kwargs"], load_file(hat_dir / "hat_tiny_x4_state_dict.safetensors"),
            load_file(hat_dir / "hat_tiny_x4_io.safetensors"))


def tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())  # the fixture README's suggested atol


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_layout_matches_official_manifest(hat_dir, config):
    manifest = json.loads((hat_dir / f"manifest_{config}.json").read_text())
    with torch.device("meta"):
        model = HAT(**manifest["constructor_kwargs"])
    state = model.state_dict()
    layout = [[key, list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in state.items()]
    assert layout == manifest["state_dict"]  # names, shapes, dtypes and order
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"]
    assert sum(t.numel() for t in state.values()) == manifest["total_state_dict_numel"]
    assert model.size_multiple == manifest["constructor_kwargs"]["window_size"]


@pytest.mark.parametrize("config", CONFIGS)
def test_variants_reproduce_official_options(hat_dir, config):
    manifest = json.loads((hat_dir / f"manifest_{config}.json").read_text())
    variant = {"HAT-S": "hat_s", "HAT": "hat", "HAT-L": "hat_l"}[config.split("_")[0]]
    official = manifest["constructor_kwargs"]
    assert dict(HAT_VARIANTS[variant], upscale=official["upscale"]) == official


def test_tiny_fixture_pad_forward_crop_matches_official(tiny):
    kwargs, state, io = tiny
    model = HAT(**kwargs).eval()
    model.load_state_dict(state, strict=True)
    scale = kwargs["upscale"]
    with torch.no_grad():
        padded, (h, w) = pad_to_multiple(io["input"], model.size_multiple)
        assert torch.equal(padded, io["input_padded"])
        out = model(padded)[..., : h * scale, : w * scale]
        torch.testing.assert_close(out, io["output"], rtol=0, atol=tolerance(io["output"]))
        out_padded = model(io["input_padded"])
        torch.testing.assert_close(out_padded, io["output_padded"], rtol=0, atol=tolerance(io["output_padded"]))


def test_official_format_checkpoint_loads_strictly(hat_dir, tiny):
    kwargs, state, _ = tiny
    checkpoint = torch.load(hat_dir / "hat_tiny_x4_official_format.pth", map_location="cpu", weights_only=True)
    weights = checkpoint["params_ema"] if "params_ema" in checkpoint else checkpoint
    weights = {key.removeprefix("module."): value for key, value in weights.items()}
    model = HAT(**kwargs)
    assert not model.load_state_dict(weights, strict=True).missing_keys
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_index_buffers_equal_computed_and_are_checked_on_load(tiny):
    kwargs, state, _ = tiny
    ws, overlap = kwargs["window_size"], kwargs["overlap_ratio"]
    model = HAT(**kwargs)
    assert torch.equal(state["relative_position_index_SA"], model.relative_position_index_SA)
    assert torch.equal(state["relative_position_index_OCA"], model.relative_position_index_OCA)
    assert torch.equal(model.relative_position_index_SA, relative_position_index(ws))
    assert model.relative_position_index_OCA.shape == (ws * ws, (ws + int(ws * overlap)) ** 2)
    assert torch.equal(model.relative_position_index_OCA, overlapping_relative_position_index(ws, overlap_window_size(ws, overlap)))

    tampered = dict(state, relative_position_index_SA=state["relative_position_index_SA"].t().contiguous())
    with pytest.raises(ValueError, match="relative_position_index_SA"):
        model.load_state_dict(tampered, strict=True)


def test_restoration_upscale_1_keeps_size_and_trains(tiny):
    kwargs, _, io = tiny
    torch.manual_seed(0)
    model = HAT(**dict(kwargs, upscale=1, depths=[2], num_heads=[2])).train()
    assert not any(key.startswith("upsample.") for key in model.state_dict())
    x = io["input_padded"][..., :16, :16]
    out = model(x)
    assert out.shape == x.shape
    (out - x).abs().mean().backward()
    # gradients reach both bias tables through the shared attention kernel
    block = model.layers[0].residual_group
    assert block.blocks[1].attn.relative_position_bias_table.grad.abs().sum() > 0
    assert block.overlap_attn.relative_position_bias_table.grad.abs().sum() > 0


def test_bad_inputs_give_clear_errors(tiny):
    kwargs, _, io = tiny
    model = HAT(**kwargs).eval()
    with pytest.raises(ValueError, match="multiple of window_size=8"):
        model(io["input"])
    with pytest.raises(ValueError, match="upsampler"):
        HAT(**dict(kwargs, upsampler="pixelshuffledirect"))
    with pytest.raises(ValueError, match="too small"):
        pad_to_multiple(io["input"][..., :3, :3], 8)
