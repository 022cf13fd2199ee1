"""VideoUNet: shapes for any frame count, the temporal layers' contract (processor swap, pad_time), the null
class, and that the temporal layers really couple frames (and only they do)."""
import pytest
import torch

from mtp.backbones.video_unet import (TemporalAttention, TemporalAttnProcessor, TemporalConv, VideoUNet,
                                      sinusoidal_embedding)
from mtp.pipelines.video_generation.freelong import FreeLongAttnProcessor, FreeLongConfig
from mtp.pipelines.video_generation.temporal import install_temporal_processor

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kwargs):
    torch.manual_seed(0)
    model = VideoUNet(**{"widths": (8, 16), "attention_levels": (0, 1), "heads": 2, "emb_dim": 16, **kwargs}).eval()
    # zero-initialised output layers would make every output 0: give all parameters random values
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("frames", [1, 3, 16, 21])
@pytest.mark.parametrize("patch", [1, 2])
def test_shapes_any_frame_count(frames, patch):
    model = tiny(patch_size=patch)
    x = torch.randn(2, 1, frames, 8, 8)
    out = model(x, torch.tensor([0, 999]), torch.tensor([3, model.null_class]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_default_variant_size_and_zero_init():
    model = VideoUNet(widths=(32, 64, 128), patch_size=2)
    n = sum(p.numel() for p in model.parameters())
    assert 1.5e6 < n < 3e6, n
    # the head is zero-initialised: an untrained model predicts eps = 0
    assert model(torch.randn(1, 1, 4, 32, 32), torch.tensor([5]), torch.tensor([1])).abs().max() == 0
    assert len(model.temporal_attentions()) == 5  # down 1, 2; mid; up 2, 1


def test_bad_inputs_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match=r"\[B, 1, T, H, W\]"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.randn(1, 1, 2, 7, 8), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"0\.\.10"):
        model(torch.randn(1, 1, 2, 8, 8), torch.tensor([1]), torch.tensor([11]))


def test_class_and_null_class_change_the_output():
    model = tiny()
    x, t = torch.randn(1, 1, 4, 8, 8), torch.tensor([500])
    outs = [model(x, t, torch.tensor([c])) for c in (0, 1, model.null_class)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    assert model.class_embedding.num_embeddings == model.num_classes + 1


def test_frames_are_coupled_only_through_temporal_layers():
    model = tiny()
    x, t, c = torch.randn(1, 1, 6, 8, 8), torch.tensor([300]), torch.tensor([2])
    base = model(x, t, c)
    y = x.clone()
    y[:, :, 5] += 1.0  # change the last frame only
    changed = model(y, t, c)
    assert (changed[:, :, 0] - base[:, :, 0]).abs().max() > 1e-4  # frame 0 sees frame 5
    # without temporal conv and attention, frames are independent
    for m in model.modules():
        if isinstance(m, TemporalConv):
            m.conv.weight.data.zero_()
            m.conv.bias.data.zero_()
        if isinstance(m, TemporalAttention):
            m.to_out[0].weight.data.zero_()
            m.to_out[0].bias.data.zero_()
    torch.testing.assert_close(model(y, t, c)[:, :, :5], model(x, t, c)[:, :, :5])


def test_temporal_attention_duck_types_diffusers_attention():
    attn = TemporalAttention(8, heads=2)
    for name in ("to_q", "to_k", "to_v"):
        assert isinstance(getattr(attn, name), torch.nn.Linear)
    assert isinstance(attn.to_out, torch.nn.ModuleList) and isinstance(attn.to_out[1], torch.nn.Dropout)
    assert attn.heads == 2 and attn.scale == pytest.approx(4 ** -0.5)
    assert isinstance(attn.processor, TemporalAttnProcessor)
    torch.nn.init.normal_(attn.to_out[0].weight)
    h = torch.randn(5, 7, 8)
    out = attn(h)
    # plain attention, written out
    q, k, v = (f(h).reshape(5, 7, 2, 4).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    ref = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1) @ v
    torch.testing.assert_close(out, attn.to_out[0](ref.transpose(1, 2).reshape(5, 7, 8)))
    calls = []
    attn.set_processor(lambda a, hs, **kw: calls.append(hs.shape) or hs * 0)
    assert attn(h).abs().max() == 0 and calls == [(5, 7, 8)]


def test_freelong_processor_with_window_covering_all_frames_equals_plain():
    model = tiny()
    x, t, c = torch.randn(1, 1, 8, 8, 8), torch.tensor([400]), torch.tensor([4])
    plain = model(x, t, c)
    config = FreeLongConfig(window=8, local_only_tokens=())
    with install_temporal_processor(model, lambda name, m: FreeLongAttnProcessor(config)) as handle:
        assert len(handle.names) == len(model.temporal_attentions())
        torch.testing.assert_close(model(x, t, c), plain, rtol=1e-4, atol=1e-5)
    # a window shorter than the video changes the result; restored processors give plain attention again
    short = FreeLongConfig(window=4, local_only_tokens=())
    with install_temporal_processor(model, lambda name, m: FreeLongAttnProcessor(short)):
        assert (model(x, t, c) - plain).abs().max() > 1e-4
    torch.testing.assert_close(model(x, t, c), plain)


def test_temporal_conv_pads_with_zeros_and_pad_time_is_replaceable():
    conv = TemporalConv(4)
    x = torch.randn(2, 4, 5, 3, 3)
    padded = conv.pad_time(x, 1)
    assert padded.shape == (2, 4, 7, 3, 3) and padded[:, :, 0].abs().max() == 0 and padded[:, :, -1].abs().max() == 0
    torch.testing.assert_close(padded[:, :, 1:-1], x)
    assert conv.conv.kernel_size == (3, 1, 1) and conv.conv.padding == (0, 0, 0)
    torch.testing.assert_close(conv(x), x)  # zero-initialised: the identity
    torch.nn.init.normal_(conv.conv.weight)
    base = conv(x)
    assert base.shape == x.shape
    context = torch.ones(2, 4, 1, 3, 3)
    conv.pad_time = lambda y, p: torch.cat([context.expand(-1, -1, p, -1, -1), y, context.expand(-1, -1, p, -1, -1)], 2)
    other = conv(x)
    assert other.shape == x.shape
    torch.testing.assert_close(other[:, :, 1:-1], base[:, :, 1:-1])  # only the end frames see the padding
    assert (other[:, :, 0] - base[:, :, 0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="odd"):
        TemporalConv(4, kernel_size=2)


def test_sinusoidal_positions_for_any_length():
    e = sinusoidal_embedding(torch.arange(100), 16)
    assert e.shape == (100, 16)
    torch.testing.assert_close(e[:10], sinusoidal_embedding(torch.arange(10), 16))
    assert sinusoidal_embedding(torch.arange(3), 7).shape == (3, 7)
