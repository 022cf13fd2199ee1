"""Diffusers video models from disk (tiny random ones saved by the test), temporal layer discovery, processor
installation and position-table extension."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parent))  # the tiny-model builder beside this file (importlib mode)
from diffusers_tiny import save_tiny_video_model  # noqa: E402

from mtp.pipelines.video_generation.diffusers_models import (  # noqa: E402
    decode_latents, generate_video, load_video_model, sample_latents)
from mtp.pipelines.video_generation.freelong import FreeLongAttnProcessor, FreeLongConfig  # noqa: E402
from mtp.pipelines.video_generation.temporal import (  # noqa: E402
    extend_position_tables, install_temporal_processor, position_tables, resized_table, sinusoid_table,
    temporal_attention_layers)

KINDS = ("unet3d", "motion", "unet2d+adapter")
SMALL = dict(height=16, width=16, steps=2, progress=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_video_models")
    return {kind: save_tiny_video_model(root / kind.replace("+", "_"), kind) for kind in KINDS}


@pytest.fixture(scope="module")
def models(folders):
    return {kind: load_video_model(folder) for kind, folder in folders.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_loads_every_layout(models, kind):
    m = models[kind]
    assert m.kind == ("unet3d" if kind == "unet3d" else "animatediff")
    assert type(m.unet).__name__ == ("UNet3DConditionModel" if kind == "unet3d" else "UNetMotionModel")
    assert m.max_frames == (None if kind == "unet3d" else 32)
    out = generate_video(m, "a moving digit", seeds=[3], num_frames=3, return_latents=True, **SMALL)
    assert out["frames"].shape == (1, 3, 3, 16, 16) and out["latents"].shape == (1, 4, 3, 8, 8)
    assert torch.isfinite(out["frames"]).all() and out["frames"].abs().max() <= 1


def test_missing_component_names_folder_component_and_expectation(tmp_path):
    folder = save_tiny_video_model(tmp_path / "half", "unet3d", skip=("vae",))
    with pytest.raises(FileNotFoundError) as err:
        load_video_model(folder)
    msg = str(err.value)
    assert str(folder) in msg and "'vae'" in msg and "AutoencoderKL" in msg


def test_missing_index_entry_and_adapter(tmp_path):
    folder = save_tiny_video_model(tmp_path / "noadapter", "unet2d+adapter")
    index = json.loads((folder / "model_index.json").read_text())
    del index["motion_adapter"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="motion_adapter"):
        load_video_model(folder)
    # the adapter given beside the folder, as AnimateDiff users keep it
    shutil.move(str(folder / "motion_adapter"), str(tmp_path / "adapter"))
    assert type(load_video_model(folder, motion_adapter=tmp_path / "adapter").unet).__name__ == "UNetMotionModel"
    del index["tokenizer"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="'tokenizer'.*CLIPTokenizer"):
        load_video_model(folder, motion_adapter=tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_video_model(tmp_path)


def test_seeds_per_sample_and_schedulers(models):
    m = models["unet3d"]
    both = sample_latents(m, "a digit", seeds=[5, 6], num_frames=3, **SMALL)
    one = sample_latents(m, "a digit", seeds=[6], num_frames=3, **SMALL)
    torch.testing.assert_close(both[1:], one, atol=1e-4, rtol=1e-4)  # a sample does not depend on its batch
    assert (both[0] - both[1]).abs().max() > 1e-3
    again = sample_latents(m, "a digit", seeds=[5, 6], num_frames=3, **SMALL)
    assert torch.equal(both, again)
    dpm = sample_latents(m, "a digit", seeds=[5, 6], num_frames=3, scheduler="dpmsolver++", **SMALL)
    assert torch.isfinite(dpm).all() and (dpm - both).abs().max() > 1e-4
    neg = sample_latents(m, "a digit", negative_prompt="blur", seeds=[5, 6], num_frames=3, **SMALL)
    assert (neg - both).abs().max() > 1e-5
    with pytest.raises(ValueError, match="scheduler"):
        sample_latents(m, "a digit", scheduler="euler", **SMALL)
    with pytest.raises(ValueError, match="2 prompts and 3 seeds"):
        sample_latents(m, ["a", "b"], seeds=[1, 2, 3], **SMALL)


def test_chunked_decoding_is_exact_and_incremental(models):
    m = models["motion"]
    latents = torch.randn(2, 4, 7, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = torch.cat([f for _, f in decode_latents(m, latents, chunk=7)], dim=1)
    pieces = list(decode_latents(m, latents, chunk=3, slicing=True, tiling=False))
    assert [s for s, _ in pieces] == [0, 3, 6] and [f.shape[1] for _, f in pieces] == [3, 3, 1]
    torch.testing.assert_close(torch.cat([f for _, f in pieces], dim=1), whole, atol=1e-5, rtol=1e-5)
    assert m.vae.use_slicing
    list(decode_latents(m, latents[:, :, :1], chunk=1, slicing=False, tiling=True))
    assert m.vae.use_tiling and not m.vae.use_slicing

    seen = []
    out = generate_video(m, "a digit", seeds=[1], num_frames=5, decode_chunk=2, return_latents=True,
                         writer=lambda start, frames: seen.append((start, frames.shape[1])), **SMALL)
    assert seen == [(0, 2), (2, 2), (4, 1)] and "frames" not in out and out["latents"].shape[2] == 5


def test_animatediff_beyond_its_32_positions(models):
    m = models["motion"]
    tables = position_tables(m.unet)
    assert tables and all(t.pe.shape[1] == 32 for t in tables.values())
    latents = sample_latents(m, "a digit", seeds=[0], num_frames=40, height=8, width=8, steps=1, progress=False)
    assert latents.shape[2] == 40 and torch.isfinite(latents).all()
    assert all(t.pe.shape[1] == 32 for t in tables.values())  # restored after the run


# ------------------------------------------------------------------------------------------ temporal.py

def test_temporal_layers_found_per_family(models):
    u3 = temporal_attention_layers(models["unet3d"].unet)
    # transformer_in + one temporal transformer per attention-carrying resnet; attn1 and attn2 in each block
    assert all(n.endswith(("attn1", "attn2")) for n in u3) and any(n.startswith("transformer_in") for n in u3)
    assert not any("attentions." in n and "temp_attentions" not in n for n in u3)  # no spatial attention
    mm = temporal_attention_layers(models["motion"].unet)
    assert all("motion_modules" in n for n in mm) and len(mm) % 2 == 0
    from mtp.backbones.video_unet import TemporalAttention, VideoUNet

    net = VideoUNet(widths=(8, 16), attention_levels=(1,), heads=2, emb_dim=16)
    ours = temporal_attention_layers(net)
    assert ours and all(isinstance(m, TemporalAttention) for m in ours.values())
    with pytest.raises(ValueError, match="no temporal attention"):
        temporal_attention_layers(torch.nn.Linear(2, 2))


def test_install_and_restore(models):
    unet = models["unet3d"].unet
    before = {n: m.processor for n, m in temporal_attention_layers(unet).items()}
    handle = install_temporal_processor(unet, lambda name, module: FreeLongAttnProcessor(FreeLongConfig(window=2)),
                                        layers=lambda n: n.startswith("down_blocks"))
    assert handle.names and all(n.startswith("down_blocks") for n in handle.names)
    now = {n: m.processor for n, m in temporal_attention_layers(unet).items()}
    assert all(isinstance(now[n], FreeLongAttnProcessor) for n in handle.names)
    assert all(now[n] is before[n] for n in before if n not in handle.names)
    handle.restore()
    assert {n: m.processor for n, m in temporal_attention_layers(unet).items()} == before
    with pytest.raises(KeyError, match="no temporal attention layer named"):
        install_temporal_processor(unet, lambda n, m: None, layers=["nope"])


def test_position_table_modes():
    stored = sinusoid_table(32, 16)
    ext = resized_table(stored, 50, "extend")
    assert ext.shape == (1, 50, 16) and torch.equal(ext[:, :32], stored)
    torch.testing.assert_close(ext, sinusoid_table(50, 16))
    lin = resized_table(stored, 63, "interpolate")  # 63 = 2 * 32 - 1: even rows are the stored ones
    torch.testing.assert_close(lin[:, 0::2], stored)
    torch.testing.assert_close(lin[:, 1::2], (stored[:, :-1] + stored[:, 1:]) / 2)
    with pytest.raises(ValueError, match="mode"):
        resized_table(stored, 40, "wrap")


def test_extend_position_tables_handle(models):
    unet = models["motion"].unet
    tables = position_tables(unet)
    original = {n: t.pe for n, t in tables.items()}
    with extend_position_tables(unet, 48, "interpolate"):
        assert all(t.pe.shape[1] == 48 for t in tables.values())
    assert all(t.pe is original[n] for n, t in tables.items())
    assert not extend_position_tables(unet, 16).previous  # long enough: nothing touched


@pytest.mark.parametrize("kind", ["unet3d", "motion"])
def test_freelong_runs_beyond_32_frames(models, kind):
    m = models[kind]
    frames = 40
    x = torch.randn(1, 4, frames, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1))
    context = text.repeat_interleave(frames, 0) if kind == "motion" else text
    t = torch.tensor(500)
    with torch.no_grad(), extend_position_tables(m.unet, frames):
        plain = m.unet(x, t, encoder_hidden_states=context).sample
        with install_temporal_processor(m.unet, lambda name, mod: FreeLongAttnProcessor(
                FreeLongConfig(window=8, mask="strict", local_only_tokens=()), hw=None, batch_size=1,
                table={16: (4, 4), 4: (2, 2), 1: (1, 1)})):
            long = m.unet(x, t, encoder_hidden_states=context).sample
        again = m.unet(x, t, encoder_hidden_states=context).sample
    assert long.shape == plain.shape and torch.isfinite(long).all()
    assert (long - plain).abs().max() > 1e-4  # FreeLong changed the temporal layers' output
    torch.testing.assert_close(again, plain)  # and restoring brought plain attention back


@pytest.mark.parametrize("kind", ["unet3d", "motion"])
def test_video_infinity_emulation_on_diffusers_models(models, kind):
    from mtp.pipelines.video_generation.video_infinity import VideoInfinityConfig

    m = models[kind]
    kw = dict(seeds=[2], num_frames=8, height=8, width=8, steps=2, progress=False)
    plain = sample_latents(m, "a digit", **kw)
    one_clip = sample_latents(m, "a digit", clip_frames=8, video_infinity=VideoInfinityConfig(
        context_frames=8, global_frames=0, dynamic_bias=False), **kw)
    torch.testing.assert_close(one_clip, plain, atol=1e-4, rtol=1e-4)  # one clip, full context: the plain model
    clips = sample_latents(m, "a digit", clip_frames=4, **kw)
    assert clips.shape == plain.shape and torch.isfinite(clips).all() and (clips - plain).abs().max() > 1e-5
    assert all(type(p).__name__ != "DualScopeAttnProcessor"
               for p in (mod.processor for mod in temporal_attention_layers(m.unet).values()))
