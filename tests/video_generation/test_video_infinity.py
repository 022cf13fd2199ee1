"""Video-Infinity: the slicing exchange, the dual-scope masks and bias, the single-clip degenerate case against
sampling.generate, and 2 CPU processes (gloo) against the single-process emulation on a full sampling run."""
import functools

import pytest
import torch

torch.set_num_threads(1)

from mtp.backbones.video_unet import VideoUNet
from mtp.pipelines.video_generation.sampling import generate
from mtp.pipelines.video_generation.temporal import temporal_attention_layers
from mtp.pipelines.video_generation.video_infinity import (
    DualScopeAttnProcessor, SliceExchange, VideoInfinityConfig, _State, generate_clips, generate_distributed,
    install_video_infinity, neighbour_context)

UNET = dict(in_channels=1, num_classes=3, widths=(8, 16), attention_levels=(0, 1), heads=2, emb_dim=16)


def randomised(module, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def tiny_unet():
    return randomised(VideoUNet(**UNET))


def test_slice_exchange_is_the_whole_sequence_cut():
    video = torch.randn(2, 12, 5)  # [B, frames, ...] cut into 3 clips of 4
    clips = video.reshape(2, 3, 4, 5)
    left, right = neighbour_context(SliceExchange(3), clips, 2, dim=2)
    padded = torch.nn.functional.pad(video, (0, 0, 2, 2))  # the whole video, zero-padded at its ends
    for c in range(3):
        torch.testing.assert_close(left[:, c], padded[:, 4 * c:4 * c + 2])
        torch.testing.assert_close(right[:, c], padded[:, 4 * c + 6:4 * c + 8])
    with pytest.raises(ValueError, match="exceed the clip's 4 frames"):
        neighbour_context(SliceExchange(3), clips, 5, dim=2)


def test_masks_window_edges_and_timestep_bias():
    state = _State(SliceExchange(3), VideoInfinityConfig(context_frames=1, global_frames=6, phase_t=800,
                                                         local_bias=10.0, global_bias=7.0))
    proc = DualScopeAttnProcessor(state)
    state.timestep = 900  # early: global phase
    m = proc.masks(3, 6, "cpu", torch.float32)
    assert m.shape == (3, 3, 3 + 2 + 6)
    keep = torch.isfinite(m[..., :5])
    band = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(keep[1], band)  # a middle clip sees one frame of each neighbour
    assert not keep[0, :, 0].any() and not keep[2, :, -1].any()  # no neighbour outside the video
    assert torch.equal(keep[0, :, 1:], band[:, 1:]) and torch.equal(keep[2, :, :-1], band[:, :-1])
    assert (m[..., 5:] == 7.0).all() and (m[..., :5][keep] == 0).all()
    state.timestep = 100  # late: local phase
    m = proc.masks(3, 6, "cpu", torch.float32)
    assert (m[..., 5:] == 0).all() and (m[..., :5][torch.isfinite(m[..., :5])] == 10.0).all()


def test_one_clip_with_full_context_is_plain_sampling():
    """One clip, context covering the clip, no global frames, no bias: every layer is the plain model's."""
    model = tiny_unet()
    kw = dict(steps=3, guidance_scale=2.0, seeds=[3, 4], progress=False)
    config = VideoInfinityConfig(context_frames=6, global_frames=0, dynamic_bias=False)
    ours = generate_clips(model, [0, 1], 6, 8, 8, clip_frames=6, config=config, **kw)
    plain = generate(model, [0, 1], 6, 8, 8, **kw)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    # the stochastic sampler and the x0 prior draw and shrink exactly as sampling.generate does
    extra = dict(eta=1.0, x0_prior=(-0.8, 0.2, 1e-3))
    ours = generate_clips(model, [0, 1], 6, 8, 8, clip_frames=6, config=config, **kw, **extra)
    plain = generate(model, [0, 1], 6, 8, 8, **kw, **extra)
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    assert all(type(m.processor).__name__ == "TemporalAttnProcessor"
               for m in temporal_attention_layers(model).values())  # restored
    assert not any("pad_time" in m.__dict__ for m in model.modules())


def test_clips_see_each_other():
    model = tiny_unet()
    x = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # [B * clips, ...], 2 clips
    t, labels = torch.full((2,), 500), torch.zeros(2, dtype=torch.long)
    cfg = VideoInfinityConfig(context_frames=2, global_frames=4)
    with torch.no_grad(), install_video_infinity(model, SliceExchange(2), cfg):
        base = model(x, t, labels)
        x2 = x.clone()
        x2[1] = torch.randn(x2[1].shape, generator=torch.Generator().manual_seed(9))  # change the second clip only
        changed = model(x2, t, labels)
    assert (changed[0] - base[0]).abs().max() > 1e-4  # the first clip's output depends on its neighbour
    with torch.no_grad():
        alone = model(x, t, labels)
    assert (alone - base).abs().max() > 1e-4  # and differs from running the clips independently


def test_two_processes_match_the_emulation():
    model = tiny_unet()
    kw = dict(class_labels=[1, 2], num_frames=8, height=8, width=8, clip_frames=4, steps=3, guidance_scale=2.0,
              seeds=[7, 8], config=VideoInfinityConfig(context_frames=2, global_frames=4))
    emulated = generate_clips(model, mode="emulate", progress=False, **kw)
    spawned = generate_distributed(functools.partial(VideoUNet, **UNET), model.state_dict(), 2, backend="gloo",
                                   **kw)
    assert spawned.shape == emulated.shape == (2, 1, 8, 8, 8)
    torch.testing.assert_close(spawned, emulated, atol=1e-5, rtol=1e-5)
    kw.update(eta=1.0, x0_prior=(-0.8, 0.2, 1e-3))  # stochastic: each clip's fresh noise is the same in both modes
    emulated = generate_clips(model, mode="emulate", progress=False, **kw)
    spawned = generate_distributed(functools.partial(VideoUNet, **UNET), model.state_dict(), 2, backend="gloo",
                                   **kw)
    torch.testing.assert_close(spawned, emulated, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="whole number of clips"):
        generate_clips(model, [0], 7, 8, 8, clip_frames=4, steps=1, progress=False)


def test_diffusers_unet3d_layers():
    """UNet3DConditionModel: dual-scope attention on its temporal transformers and neighbour context in every
    TemporalConvLayer conv. One clip with full context is the plain model; two clips interact."""
    pytest.importorskip("diffusers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from diffusers_tiny import tiny_unet3d

    unet = randomised(tiny_unet3d(), seed=1, std=0.05)
    x = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # [B * clips, C, F, h, w]
    text = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(500)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=text).sample
        full = VideoInfinityConfig(context_frames=4, global_frames=0, dynamic_bias=False)
        with install_video_infinity(unet, SliceExchange(1), full):
            same = unet(x, t, encoder_hidden_states=text).sample
        with install_video_infinity(unet, SliceExchange(2), VideoInfinityConfig(context_frames=2, global_frames=4)):
            base = unet(x, t, encoder_hidden_states=text).sample
            x2 = x.clone()
            x2[1] = torch.randn(x2[1].shape, generator=torch.Generator().manual_seed(9))
            changed = unet(x2, t, encoder_hidden_states=text).sample
        again = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(same, plain, atol=1e-5, rtol=1e-5)
    assert (changed[0] - base[0]).abs().max() > 1e-5
    torch.testing.assert_close(again, plain)  # everything restored
