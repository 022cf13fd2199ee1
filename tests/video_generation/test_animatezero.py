"""AnimateZero: window indices, the processor against a brute-force reference and plain attention, exact first
frame in pixel space (our VideoUNet) and latent space (a tiny AnimateDiff), bad input."""
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from mtp.backbones.video_unet import TemporalAttention, TemporalAttnProcessor, VideoUNet, sinusoidal_embedding
from mtp.pipelines.video_generation.animatezero import (
    AnimateZeroAttnProcessor, FirstFrameInjector, animate, install_animatezero, window_indices)
from mtp.pipelines.video_generation.temporal import temporal_attention_layers


def randomised(module, seed=0, std=0.2):
    """Random weights everywhere: the backbone zero-initialises its output layers, which would hide errors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def sinusoid(n, dim, device):
    return sinusoidal_embedding(torch.arange(n, device=device), dim)


def test_window_indices():
    assert window_indices(5, 3, "replace").tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 2, 3], [0, 3, 4]]
    assert window_indices(5, 3, "concat").tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3],
                                                      [0, 2, 3, 4]]
    with pytest.raises(ValueError, match="variant"):
        window_indices(4, 2, "insert")


def reference(attn, x, window, variant, positions):
    """Literal per-frame computation: rebuild each key from (token - its position + its slot's position)."""
    n, t, c = x.shape
    idx = window_indices(t, window, variant)
    slots = idx.shape[1]
    pe = positions(max(t, slots), c, x.device) if positions else torch.zeros(max(t, slots), c)
    h = x - pe[:t]
    heads, d = attn.heads, c // attn.heads
    out = []
    for i in range(t):
        q = attn.to_q(h[:, i] + pe[slots - 1]).reshape(n, heads, 1, d)
        keys = torch.stack([h[:, j] + pe[s] for s, j in enumerate(idx[i].tolist())], dim=1)  # [n, L, c]
        k = attn.to_k(keys).reshape(n, slots, heads, d).transpose(1, 2)
        v = attn.to_v(keys).reshape(n, slots, heads, d).transpose(1, 2)
        p = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)
        out.append((p @ v).transpose(1, 2).reshape(n, c))
    return attn.to_out[0](torch.stack(out, dim=1))


@pytest.mark.parametrize("variant", ["replace", "concat"])
@pytest.mark.parametrize("with_positions", [False, True])
def test_processor_matches_reference(variant, with_positions):
    attn = randomised(TemporalAttention(8, heads=2))
    x = torch.randn(6, 7, 8, generator=torch.Generator().manual_seed(1))
    positions = sinusoid if with_positions else None
    if with_positions:
        x = x + sinusoid(7, 8, x.device)
    with torch.no_grad():
        expected = reference(attn, x, 3, variant, positions)
        for block in (None, 2):
            got = AnimateZeroAttnProcessor(3, variant, positions=positions, block=block)(attn, x)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_positions", [False, True])
def test_degenerate_case_is_plain_attention(with_positions):
    """T == window, replace: the last frame's keys are all frames at their own positions -> plain attention."""
    attn = randomised(TemporalAttention(8, heads=2), seed=3)
    t = 5
    x = torch.randn(4, t, 8, generator=torch.Generator().manual_seed(2))
    if with_positions:
        x = x + sinusoid(t, 8, x.device)
    with torch.no_grad():
        plain = TemporalAttnProcessor()(attn, x)
        az = AnimateZeroAttnProcessor(t, "replace", positions=sinusoid if with_positions else None)(attn, x)
        concat = AnimateZeroAttnProcessor(t, "concat", positions=sinusoid if with_positions else None)(attn, x)
    torch.testing.assert_close(az[:, -1], plain[:, -1], atol=1e-5, rtol=1e-5)
    assert (az[:, :-1] - plain[:, :-1]).abs().max() > 1e-3  # the earlier frames see only what precedes them
    assert (concat - az).abs().max() > 1e-3  # the variants differ


def tiny_unet():
    return randomised(VideoUNet(in_channels=1, num_classes=3, widths=(8, 16), attention_levels=(0, 1), heads=2,
                                emb_dim=16), std=0.1)


def test_first_frame_is_the_image_in_pixel_space():
    model = tiny_unet()
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    before = {n: m.processor for n, m in temporal_attention_layers(model).items()}
    kw = dict(steps=3, guidance_scale=2.0, seeds=[0, 1], progress=False, window=4)
    video = animate(model, image, [0, 2], num_frames=6, **kw)
    assert video.shape == (2, 1, 6, 8, 8)
    assert torch.equal(video[:, :, 0], image.expand(2, 1, 8, 8))
    assert (video[:, :, 1:] - image[None, :, None]).abs().max() > 1e-2  # the other frames are generated
    assert {n: m.processor for n, m in temporal_attention_layers(model).items()} == before  # restored
    concat = animate(model, image, [0, 2], num_frames=6, variant="concat", **kw)
    assert torch.equal(concat[:, :, 0], video[:, :, 0]) and (concat - video).abs().max() > 1e-4


def test_bad_image_shapes_name_both():
    model = tiny_unet()
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*\[1, H, W\]"):
        animate(model, torch.zeros(3, 8, 8), [0], num_frames=4, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\(1, 7, 7\).*multiples of 2"):
        animate(model, torch.zeros(1, 7, 7), [0], num_frames=4, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        animate(model, torch.full((1, 8, 8), 3.0), [0], num_frames=4, steps=1, progress=False)
    inj = FirstFrameInjector(torch.zeros(1, 4, 4))
    from mtp.pipelines.video_generation.sampling import make_scheduler

    sched = make_scheduler("ddim")
    sched.set_timesteps(2)
    inj.bind(sched)
    with pytest.raises(ValueError, match=r"first frame \(1, 1, 4, 4\).*\(1, 1, 3, 8, 8\)"):
        inj(0, 999, torch.zeros(1, 1, 3, 8, 8))


def test_install_only_the_encoder_layers_by_default():
    model = tiny_unet()
    with install_animatezero(model) as handle:
        assert handle.names and all(n.startswith("down.") for n in handle.names)
        assert all(isinstance(temporal_attention_layers(model)[n].processor, AnimateZeroAttnProcessor)
                   for n in handle.names)
    with install_animatezero(model, layers="all") as handle:
        assert len(handle.names) == len(temporal_attention_layers(model))


def test_first_frame_in_latent_space_animatediff(tmp_path):
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(Path(__file__).parent))
    from diffusers_tiny import save_tiny_video_model

    from mtp.pipelines.video_generation.animatezero import animate_diffusers
    from mtp.pipelines.video_generation.diffusers_models import decode_latents, load_video_model

    vm = load_video_model(save_tiny_video_model(tmp_path / "ad", "motion"))
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    kw = dict(image=image, num_frames=4, steps=2, seeds=[0], progress=False, window=3, return_latents=True)
    out = animate_diffusers(vm, "a moving digit", **kw)
    z0 = out["image_latent"]
    assert torch.equal(out["latents"][:, :, 0], z0.expand(1, *z0.shape[1:]))
    decoded = next(decode_latents(vm, z0[:, :, None], chunk=1))[1][:, 0]
    torch.testing.assert_close(out["frames"][:, 0], decoded, atol=1e-5, rtol=1e-5)
    concat = animate_diffusers(vm, "a moving digit", variant="concat", **kw)
    assert (concat["latents"][:, :, 1:] - out["latents"][:, :, 1:]).abs().max() > 1e-5
    with pytest.raises(ValueError, match=r"\(3, 24, 24\).*\[3, 16, 16\]"):
        animate_diffusers(vm, "a digit", image=torch.zeros(3, 24, 24), height=16, width=16, num_frames=2, steps=1)
