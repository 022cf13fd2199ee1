"""FreeLong SpectralBlend: parity with the official LaVie and VideoCrafter2 integrations (../shared/fixtures/freelong),
kernel path == reference path, filter properties, other lengths, bad inputs."""
import json

import pytest
import torch

from mtp.kernels import attention_reference
from mtp.pipelines.video_generation import freelong as fl

pytestmark = pytest.mark.usefixtures("one_thread")


def load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def lavie(fixtures_dir):
    root = fixtures_dir / "freelong"
    side = json.loads((root / "freelong_lavie_T32_w16.json").read_text())
    io = load(root / "freelong_lavie_T32_w16_io.safetensors")
    block = fl.LaVieFreeLongBlock(dim=80, heads=2, dim_head=40, cross_attention_dim=24, rotary_dim=32,
                                  video_length=32, local_window=16, d_s=.25, d_t=.25).eval()
    block.load_state_dict(load(root / "freelong_lavie_T32_w16_state_dict.safetensors"), strict=True)
    return block, io, side["suggested_atol"]


@pytest.fixture(scope="module")
def vc2(fixtures_dir):
    root = fixtures_dir / "freelong"
    side = json.loads((root / "freelong_vc2_T32_w16.json").read_text())
    io = load(root / "freelong_vc2_T32_w16_io.safetensors")
    block = fl.VC2FreeLongBlock(16, 2, 8, video_length=32, local_window=16, d_s=.25, d_t=.25).eval()
    block.load_state_dict(load(root / "freelong_vc2_T32_w16_state_dict.safetensors"), strict=True)
    return block, io, side["suggested_atol"]


def close(actual, expected, atol):
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------- filter

def test_filter_matches_fixture(lavie, vc2):
    io = lavie[1]
    for key, shape in (("lpf_T32_H5_W8", (32, 5, 8)), ("lpf_T32_H10_W16", (32, 10, 16))):
        close(fl.gaussian_low_pass_filter(shape, .25, .25), io[key], 1e-6)
        close(fl.gaussian_low_pass_filter_reference(shape, .25, .25), io[key], 1e-6)
    close(fl.gaussian_low_pass_filter((32, 5, 8)), vc2[1]["lpf_T32_H5_W8"], 1e-6)


def test_filter_properties():
    lpf = fl.gaussian_low_pass_filter((16, 10, 12), d_s=.3, d_t=.2)
    assert lpf.dtype == torch.float32 and lpf.shape == (16, 10, 12)
    assert lpf[8, 5, 6].item() == 1.0  # DC sits at N/2 after fftshift for even sizes
    assert lpf.max().item() == 1.0 and lpf.min().item() > 0
    # symmetric about the centre (even sizes): index N/2 + j mirrors N/2 - j
    centred = lpf[1:, 1:, 1:]
    close(centred, centred.flip(0, 1, 2), 1e-7)
    # d_t acts on time, d_s on space: exp(-((t/d_t)^2 + (h/d_s)^2 + (w/d_s)^2) / 2) on arange(N)*2/N - 1
    t = torch.arange(16, dtype=torch.float64) * 2 / 16 - 1
    close(lpf[:, 5, 6], torch.exp(-0.5 * (t / .2) ** 2).float(), 1e-6)
    h = torch.arange(10, dtype=torch.float64) * 2 / 10 - 1
    close(lpf[8, :, 6], torch.exp(-0.5 * (h / .3) ** 2).float(), 1e-6)
    # odd sizes: no grid point at 0, the peak is below 1 (the official behaviour, kept)
    assert 0.72 < fl.gaussian_low_pass_filter((32, 5, 8)).max().item() < 0.73
    # cached per shape, zero cutoff is the official all-zero filter
    assert fl.gaussian_low_pass_filter((16, 10, 12), .3, .2) is lpf
    assert fl.gaussian_low_pass_filter((4, 4, 4), 0.0, .25).abs().max().item() == 0


def test_spectral_blend_matches_fixture(lavie):
    _, io, atol = lavie
    args = io["mix_global_bcthw"], io["mix_local_bcthw"]
    close(fl.spectral_blend_reference(*args, io["lpf_T32_H5_W8"]), io["mix_out_bcthw"], atol)
    close(fl.spectral_blend(*args, .25, .25), io["mix_out_bcthw"], atol)
    close(fl.spectral_blend_tokens(io["global_attn_out"], io["local_attn_out"], (5, 8)), io["combined"], atol)
    close(fl.spectral_blend_tokens(io["global_attn_out"], io["local_attn_out"], (5, 8), reference=True),
          io["combined"], atol)


def test_spectral_blend_identities():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 9, 5, 7, generator=g), torch.randn(2, 3, 9, 5, 7, generator=g)  # odd sizes
    close(fl.spectral_blend(a, a), a, 1e-5)
    close(fl.spectral_blend(a, b, d_s=0.0), b, 1e-5)
    lpf = fl.gaussian_low_pass_filter((9, 5, 7))
    close(fl.spectral_blend(a, b), fl.spectral_blend_reference(a, b, lpf), 1e-5)
    out16 = fl.spectral_blend(a.half(), b.half())
    assert out16.dtype == torch.float16


# ------------------------------------------------------------------------------------------------- masks

def test_masks_match_fixture(lavie, vc2):
    assert torch.equal(fl.local_mask_reference(32, 16, "adjusted"), lavie[1]["local_mask_adjusted"])
    assert torch.equal(fl.local_mask_reference(32, 16, "strict"), vc2[1]["local_mask_strict_allowed"])


@pytest.mark.parametrize("variant", fl.MASK_VARIANTS)
@pytest.mark.parametrize("length,window", [(32, 16), (24, 16), (64, 16), (16, 16), (40, 7), (9, 1)])
def test_bounds_match_reference_mask(variant, length, window):
    start, end = fl.local_window_bounds(length, window, variant)
    cols = torch.arange(length)
    allowed = (cols[None] >= start[:, None]) & (cols[None] < end[:, None])
    ref = fl.local_mask_reference(length, window, variant)
    assert torch.equal(allowed, ref if ref.dtype == torch.bool else ref == 0)
    if variant == "adjusted":
        assert int((end - start).min()) == window


@pytest.mark.parametrize("block", [None, 1, 5, 16, 40])
def test_banded_attention_equals_dense(block):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 70, 8, generator=g) for _ in range(3))
    bias = torch.randn(2, 70, 70, generator=g)
    for variant in fl.MASK_VARIANTS:
        start, end = fl.local_window_bounds(70, 16, variant)
        cols = torch.arange(70)
        keep = (cols[None] >= start[:, None]) & (cols[None] < end[:, None])
        ref = attention_reference(q, k, v, bias=bias, mask=keep)
        out = fl.banded_attention(q, k, v, start, end, block=block,
                                  bias_fn=lambda qp, kp: bias[:, qp[..., None], kp[:, None, :]])
        close(out, ref, 1e-5)


# ---------------------------------------------------------------------------------------- fixture parity

@pytest.mark.parametrize("reference", [False, True])
def test_lavie_parity(lavie, reference):
    block, io, atol = lavie
    x = io["hidden_states_temporal"]
    with torch.no_grad():
        glob, loc = block.attn_temp.freelong_branches(block.norm_temp(x), 16, "adjusted", reference=reference)
        close(glob, io["global_attn_out"], atol)
        close(loc, io["local_attn_out"], atol)
        close(block.freelong_temporal(x, video_length=32, hw=(5, 8), reference=reference), io["temporal_output"], atol)
        close(block.freelong_temporal(x, video_length=32, reference=reference), io["temporal_output"], atol)
        out = block(io["hidden_states_block"], encoder_hidden_states=io["encoder_hidden_states"], video_length=32,
                    reference=reference)
    close(out, io["block_output"], 1e-5 * max(1, io["block_output"].abs().max().item()))


def test_lavie_pieces(lavie):
    block, io, atol = lavie
    with torch.no_grad():
        close(block.norm_temp(io["hidden_states_temporal"]), io["norm_temp_out"], 1e-6)
        close(block.attn_temp.time_rel_pos_bias(32), io["rel_pos_bias"], 0)
        close(block.attn_temp(io["norm_temp_out"], attention_mask=io["local_mask_adjusted"]), io["local_attn_out"],
              atol)


@pytest.mark.parametrize("reference", [False, True])
def test_vc2_parity(vc2, reference):
    block, io, atol = vc2
    x = io["hidden_states"]
    with torch.no_grad():
        glob, loc = block.attn1.freelong_branches(block.norm1(x), 16, "strict", reference=reference)
        close(glob + x, io["attn1_global_plus_residual"], atol)
        close(loc + x, io["attn1_local_plus_residual"], atol)
        after1 = block.freelong_attn(x, block.norm1, block.attn1, (5, 8), reference=reference)
        close(after1, io["after_attn1"], atol)
        glob, loc = block.attn2.freelong_branches(block.norm2(io["after_attn1"]), 16, "strict", reference=reference)
        close(glob + io["after_attn1"], io["attn2_global_plus_residual"], atol)
        close(loc + io["after_attn1"], io["attn2_local_plus_residual"], atol)
        close(block.freelong_attn(io["after_attn1"], block.norm2, block.attn2, (5, 8), reference=reference),
              io["after_attn2"], atol)
        close(block(x, reference=reference), io["block_output"], atol)


def test_processor_matches_vc2(vc2):
    block, io, atol = vc2
    x = io["hidden_states"]
    with torch.no_grad():
        for proc in (fl.FreeLongAttnProcessor(fl.FreeLongConfig(mask="strict"), batch_size=1),
                     fl.FreeLongAttnProcessor(fl.FreeLongConfig(mask="strict"), hw=(5, 8))):
            close(proc(block.attn1, block.norm1(x)) + x, io["after_attn1"], atol)


def test_lavie_training_mode_is_plain_global(lavie):
    block, io, _ = lavie
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2 * 8, 40, 80, generator=g), torch.randn(2 * 8, 4, 24, generator=g)
    try:
        block.train()
        with torch.no_grad():
            out = block(x, encoder_hidden_states=ctx, video_length=8)
    finally:
        block.eval()
    with torch.no_grad():  # spatial, cross, plain global temporal attention (no local branch, no blend), FF
        h = block.attn1(block.norm1(x)) + x
        h = block.attn2(block.norm2(h), ctx) + h
        h = h.reshape(2, 8, 40, 80).transpose(1, 2).reshape(80, 8, 80)
        h = block.attn_temp(block.norm_temp(h)) + h
        h = h.reshape(2, 40, 8, 80).transpose(1, 2).reshape(16, 40, 80)
        expected = block.ff(block.norm3(h)) + h
    close(out, expected, 1e-5)


def test_local_branch_is_banded(vc2, monkeypatch):
    """At T=128 the local branch never hands the kernel a T x T mask: blocks of 17 queries (the widest window)
    see at most 17 + 16 keys."""
    shapes = []
    kernel = fl.attention

    def spy(q, k, v, **kwargs):
        mask = kwargs.get("mask")
        shapes.append(None if mask is None else tuple(mask.shape))
        return kernel(q, k, v, **kwargs)

    monkeypatch.setattr(fl, "attention", spy)
    block = vc2[0]
    x = torch.randn(40, 128, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = block.freelong_attn(x, block.norm1, block.attn1, (5, 8))
        ref = block.freelong_attn(x, block.norm1, block.attn1, (5, 8), reference=True)
    close(out, ref, 2e-5)
    masks = [shape for shape in shapes if shape is not None]
    assert masks and all(shape == (8, 17, 33) for shape in masks), masks


def test_local_only_level(vc2):
    block, io, _ = vc2
    cfg = block.config
    x = io["hidden_states"]
    with torch.no_grad():
        glob, loc = block.attn1.freelong_branches(block.norm1(x), 16, "strict")
        out = fl._blend_or_local(glob, loc, (5, 8), fl.FreeLongConfig(local_only_tokens=(40,)), False)
    assert torch.equal(out, loc) and cfg.local_only_tokens == (2560,)


# --------------------------------------------------------------------------- other lengths, both variants

@pytest.mark.parametrize("length", [24, 64])
@pytest.mark.parametrize("variant", fl.MASK_VARIANTS)
def test_other_lengths_kernel_equals_reference(lavie, vc2, length, variant):
    g = torch.Generator().manual_seed(length)
    lblock, vblock = lavie[0], vc2[0]
    lcfg, vcfg = lblock.config, vblock.config
    try:
        lblock.config = fl.FreeLongConfig(mask=variant)
        vblock.config = fl.FreeLongConfig(mask=variant)
        x = torch.randn(2 * 40, length, 80, generator=g)
        xv = torch.randn(40, length, 16, generator=g)
        with torch.no_grad():
            out = lblock.freelong_temporal(x, length, hw=(5, 8))
            ref = lblock.freelong_temporal(x, length, hw=(5, 8), reference=True)
            outv, refv = vblock(xv, hw=(5, 8)), vblock(xv, hw=(5, 8), reference=True)
    finally:
        lblock.config, vblock.config = lcfg, vcfg
    assert out.shape == x.shape and torch.isfinite(out).all()
    close(out, ref, 2e-5)
    close(outv, refv, 2e-5)


# ------------------------------------------------------------------------------------------- bad inputs

def test_bad_inputs(lavie, vc2):
    lblock, vblock = lavie[0], vc2[0]
    with pytest.raises(ValueError, match="larger than the video length"):
        fl.local_window_bounds(8, 16)
    with pytest.raises(ValueError, match="larger than the video length"):
        vblock(torch.randn(40, 8, 16), hw=(5, 8))
    with pytest.raises(ValueError, match="variant"):
        fl.local_window_bounds(32, 16, "causal")
    with pytest.raises(ValueError, match="mask"):
        fl.FreeLongConfig(mask="box")
    with pytest.raises(ValueError, match=r"\[\(B\*H\*W\), T"):
        vblock(torch.randn(32, 16), hw=(5, 8))
    with pytest.raises(ValueError, match="whole number"):
        vblock(torch.randn(41, 32, 16), hw=(5, 8))
    with pytest.raises(ValueError, match="level table"):
        vblock(torch.randn(42, 32, 16))
    with pytest.raises(ValueError, match="whole number"):
        lblock(torch.randn(33, 40, 80), torch.randn(33, 4, 24), video_length=32)
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        fl.gaussian_low_pass_filter((5, 8))
    with pytest.raises(ValueError, match="self-attention only"):
        fl.FreeLongAttnProcessor(hw=(5, 8))(vblock.attn1, torch.randn(40, 32, 16), torch.randn(40, 4, 16))


def test_processor_runs_inside_a_real_diffusers_attention(vc2):
    """Installed with set_processor on diffusers' own Attention (the fixture's attn1 weights under its names),
    called through Attention.forward as a UNet would."""
    from diffusers.models.attention_processor import Attention

    block, io, atol = vc2
    x = io["hidden_states"]
    layer = Attention(query_dim=16, heads=2, dim_head=8).eval()
    layer.load_state_dict(block.attn1.state_dict(), strict=True)
    layer.set_processor(fl.FreeLongAttnProcessor(fl.FreeLongConfig(mask="strict"), hw=(5, 8)))
    with torch.no_grad():
        close(layer(block.norm1(x)) + x, io["after_attn1"], atol)


@pytest.mark.parametrize("mask", fl.MASK_VARIANTS)
def test_processor_reference_equals_fast_path(vc2, mask):
    """reference=True (dense softmax, materialised [T, T] mask, spectral_blend_reference) == the kernel path,
    on the fixture's layer and on a length where the banded path skips most keys."""
    block, io, atol = vc2
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        cases = ((block.norm1(io["hidden_states"]), (5, 8)), (torch.randn(2 * 3 * 4, 70, 16, generator=g), (3, 4)))
        for x, hw in cases:
            cfg = fl.FreeLongConfig(window=16, mask=mask, local_only_tokens=())
            fast = fl.FreeLongAttnProcessor(cfg, hw=hw)(block.attn1, x)
            ref = fl.FreeLongAttnProcessor(cfg, hw=hw, reference=True)(block.attn1, x)
            close(ref, fast, max(atol, 1e-5))
        close(fl.FreeLongAttnProcessor(fl.FreeLongConfig(mask="strict"), hw=(5, 8), reference=True)(
            block.attn1, block.norm1(io["hidden_states"])) + io["hidden_states"], io["after_attn1"], atol)


@pytest.mark.parametrize("length", [20, 64, 65, 100])
def test_banded_attention_dense_shortcut_and_band_agree(length):
    """Up to DENSE_BAND_WINDOWS windows the local branch is one dense masked call; beyond, the band: both equal
    the masked reference on either side of the switch."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, length, 8, generator=g) for _ in range(3))
    for variant in fl.MASK_VARIANTS:
        start, end = fl.local_window_bounds(length, 16, variant)
        cols = torch.arange(length)
        keep = (cols[None] >= start[:, None]) & (cols[None] < end[:, None])
        close(fl.banded_attention(q, k, v, start, end), attention_reference(q, k, v, mask=keep), 1e-5)
