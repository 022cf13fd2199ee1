"""The video_generation pipeline end to end with a tiny VideoUNet: the recipe trains it (mtp.engine.run), the
export reloads, generation is seeded per sample, both schedulers and guidance work, outputs are playable MP4s
(re-read with PyAV) / GIF / PNG / tensors written without overwriting, and bad requests fail naming the value."""
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mtp import Pipeline
from mtp.config import load_recipe
from mtp.pipeline import InputError, OptionError
from mtp.pipelines.video_generation import writers
from mtp.pipelines.video_generation.sampling import generate

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "video_generation" / "video_unet_moving_digits.yaml"
TINY = ["backbone.kwargs={widths: [8, 16], attention_levels: [1], heads: 2, emb_dim: 16, patch_size: 1}",
        "data.kwargs.canvas=16", "data.kwargs.digit_size=8", "data.kwargs.num_frames=4",
        "data.splits.train.kwargs.num_items=16", "data.splits.val.kwargs.num_items=4",
        "data.splits.test.kwargs.num_items=4", "train.max_steps=3", "train.scheduler=none",
        "train.scheduler_kwargs={}", "train.val_every_steps=2", "train.checkpoint_every_steps=null",
        "train.batch_size=4", "train.threads=1", "options.num_frames=4", "options.height=16", "options.width=16",
        "options.steps=3", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mtp.engine import run

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(RECIPE, [*TINY, f"output.dir={out}", "output.name=tiny"])
    result = run(recipe, progress=False)
    return result, out / "tiny"


@pytest.fixture(scope="module")
def pipe(trained):
    return Pipeline("video_generation", weights=str(trained[1] / "model.safetensors"), device="cpu")


def read_mp4(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


def test_recipe_trains_exports_and_writes_samples(trained):
    result, run_dir = trained
    assert result["task"] == "video_generation" and np.isfinite(result["metrics"]["diffusion_loss"])
    assert result["metrics"]["samples"] == 4
    assert {"model.safetensors", "model.json", "samples"} <= {p.name for p in run_dir.iterdir()}
    sidecar = json.loads((run_dir / "model.json").read_text())
    assert sidecar["backbone"] == "video_unet" and sidecar["options"]["height"] == 16
    mp4s = sorted((run_dir / "samples").glob("*.mp4"))
    assert len(mp4s) == 10 and len(list((run_dir / "samples").glob("*.png"))) == 10
    frames, fps = read_mp4(mp4s[0])
    assert frames.shape == (4, 16, 16, 3) and fps == pytest.approx(8.0)


def test_reloaded_pipeline_generates_seeded_per_sample_videos(pipe):
    assert pipe.config["classes"] == [str(i) for i in range(10)] and pipe.config["num_frames"] == 4
    one = pipe({"class": 3, "seed": 5})
    assert one.video.shape == (4, 1, 16, 16) and one.class_id == 3 and one.name == "3_s5_4f"
    assert one.video.min() >= -1 and one.video.max() <= 1
    torch.testing.assert_close(pipe({"class": "3", "seed": 5}).video, one.video)  # by name, same seed: same video
    both = pipe([{"class": 3, "seed": 5}, {"class": 3, "seed": 6}])
    torch.testing.assert_close(both[0].video, one.video, rtol=1e-4, atol=1e-4)  # batched or alone: the same
    assert (both[1].video - both[0].video).abs().max() > 1e-3                    # each sample its own seed
    long = pipe({"class": 2, "frames": 9})
    assert long.video.shape == (9, 1, 16, 16)


def random_model():
    """A tiny VideoUNet with every weight random: three training steps leave the class embedding (hence guidance)
    with almost no effect, and sampling tests need outputs that depend on every input."""
    from mtp.backbones.video_unet import VideoUNet

    torch.manual_seed(0)
    model = VideoUNet(widths=(8, 16), attention_levels=(1,), heads=2, emb_dim=16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def test_schedulers_guidance_and_temporal_methods(pipe):
    model = random_model()
    kwargs = dict(num_frames=4, height=16, width=16, steps=3, seeds=[1, 2], progress=False)
    ddim = generate(model, [1, 7], scheduler="ddim", guidance_scale=2.0, **kwargs)
    dpm = generate(model, [1, 7], scheduler="dpmsolver++", guidance_scale=2.0, **kwargs)
    plain = generate(model, [1, 7], scheduler="ddim", guidance_scale=1.0, **kwargs)
    assert ddim.shape == dpm.shape == (2, 1, 4, 16, 16)
    assert (ddim - dpm).abs().max() > 1e-4 and (ddim - plain).abs().max() > 1e-4
    torch.testing.assert_close(generate(model, [1, 7], scheduler="ddim", guidance_scale=2.0, **kwargs), ddim)
    # stochastic DDIM: seeded per sample (the same video alone or in a batch), not the deterministic one
    noisy = generate(model, [1, 7], scheduler="ddim", eta=1.0, **kwargs)
    alone = generate(model, [7], scheduler="ddim", eta=1.0, **{**kwargs, "seeds": [2]})
    torch.testing.assert_close(alone[0], noisy[1], rtol=1e-4, atol=1e-4)
    assert (noisy - ddim).abs().max() > 1e-3
    sde = generate(model, [1, 7], scheduler="dpmsolver++", eta=1.0, **kwargs)
    torch.testing.assert_close(generate(model, [7], scheduler="dpmsolver++", eta=1.0, **{**kwargs, "seeds": [2]})[0],
                               sde[1], rtol=1e-4, atol=1e-4)
    assert (sde - dpm).abs().max() > 1e-3
    with pytest.raises(ValueError, match="eta=0.5.*0 or 1 for dpmsolver"):
        generate(model, [1], scheduler="dpmsolver++", eta=0.5, **{**kwargs, "seeds": [1]})
    seen = []

    def hook(index, t, latents):
        seen.append(int(t))
        latents[:, :, 0] = 0.5  # e.g. AnimateZero pins the first frame
        return latents

    pinned = generate(model, [1], num_frames=4, height=16, width=16, steps=3, seeds=[1], progress=False,
                      step_hook=hook)
    assert len(seen) == 3 and seen[0] == 999 and torch.all(pinned[:, :, 0] == 0.5)
    # FreeLong with a window covering the video is plain attention; a shorter one changes a longer video
    from mtp.pipelines.video_generation.pipeline import VideoGenerationPipeline

    random_pipe = VideoGenerationPipeline(model=model, device="cpu", height=16, width=16, steps=3)
    base = random_pipe({"class": 4, "seed": 1, "frames": 8})
    same = random_pipe({"class": 4, "seed": 1, "frames": 8}, temporal="freelong", freelong_window=8)
    torch.testing.assert_close(same.video, base.video, rtol=1e-3, atol=1e-3)
    other = random_pipe({"class": 4, "seed": 1, "frames": 8}, temporal="freelong", freelong_window=2)
    assert (other.video - base.video).abs().max() > 1e-4
    # Video-Infinity: clips of clip_frames with exchanged context; the model is left as it was
    stochastic = random_pipe({"class": 4, "seed": 1, "frames": 8}, temporal="video_infinity", clip_frames=4,
                             infinity_context_frames=2, infinity_global_frames=4)
    assert stochastic.video.shape == (8, 1, 16, 16)
    base = random_pipe({"class": 4, "seed": 1, "frames": 8}, eta=0.0)
    infinity = random_pipe({"class": 4, "seed": 1, "frames": 8}, temporal="video_infinity", clip_frames=4,
                           infinity_context_frames=2, infinity_global_frames=4, eta=0.0)
    assert infinity.video.shape == (8, 1, 16, 16) and (infinity.video - base.video).abs().max() > 1e-4
    with pytest.raises(InputError, match="frames=6.*clip_frames=4"):
        random_pipe({"class": 4, "frames": 6}, temporal="video_infinity", clip_frames=4, infinity_context_frames=2,
                    eta=0.0)
    with pytest.raises(OptionError, match="infinity_context_frames=8: at most clip_frames=4"):
        random_pipe({"class": 4, "frames": 8}, temporal="video_infinity", clip_frames=4, eta=0.0)
    assert all(type(a.processor).__name__ == "TemporalAttnProcessor" for a in model.temporal_attentions())
    torch.testing.assert_close(random_pipe({"class": 4, "seed": 1, "frames": 8}, eta=0.0).video, base.video)


def test_outputs_are_written_playable_and_never_overwritten(pipe, tmp_path):
    out = tmp_path / "out"
    report = pipe([{"class": 1, "seed": 0, "name": "a"}, 2], output=str(out), formats=["mp4", "gif", "png", "pt"],
                  fps=12)
    assert report.items_written == 2 and {p.name for p in out.iterdir()} == {
        "a.mp4", "a.gif", "a.png", "a.pt", "2_s1_4f.mp4", "2_s1_4f.gif", "2_s1_4f.png", "2_s1_4f.pt"}
    frames, fps = read_mp4(out / "a.mp4")
    assert frames.shape == (4, 16, 16, 3) and fps == pytest.approx(12.0)
    saved = torch.load(out / "a.pt")
    assert saved.shape == (4, 1, 16, 16)
    # the MP4 holds the video (lossy H.264, grey expanded to RGB)
    expected = writers.to_uint8_frames(saved).astype(float)
    assert np.abs(frames.astype(float) - expected).mean() < 8
    before = (out / "a.mp4").read_bytes()
    with pytest.raises(FileExistsError, match="a.mp4"):
        pipe({"class": 1, "seed": 3, "name": "a"}, output=str(out))
    assert (out / "a.mp4").read_bytes() == before
    pipe({"class": 1, "seed": 3, "name": "a"}, output=str(out), overwrite=True)
    assert (out / "a.mp4").read_bytes() != before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_request_files_folder_run(pipe, tmp_path):
    folder = tmp_path / "requests"
    folder.mkdir()
    (folder / "digits.yaml").write_text("- {class: 0, seed: 1}\n- {class: 9, seed: 2, frames: 6, name: nine}\n")
    (folder / "bad.json").write_text(json.dumps([{"class": 12}]))
    report = pipe(str(folder), output=str(tmp_path / "out"))
    assert report.items_written == 1 and [Path(f.input).name for f in report.failures] == ["bad.json"]
    assert "class 12" in report.failures[0].error and "0..9" in report.failures[0].error
    manifest = json.loads((tmp_path / "out" / "digits" / "manifest.json").read_text())
    assert [v["name"] for v in manifest["videos"]] == ["0_s1_4f", "nine"] and manifest["videos"][1]["frames"] == 6
    assert read_mp4(tmp_path / "out" / "digits" / "nine.mp4")[0].shape[0] == 6
    again = pipe(str(folder), output=str(tmp_path / "out"))
    assert again.items_written == 0 and len(again.skipped_existing) == 1  # done items are not redone


def test_x0_prior_shrinkage():
    from mtp.pipelines.video_generation.sampling import shrink_eps

    torch.manual_seed(0)
    x0 = torch.rand(2, 1, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    for a, expect in ((0.999, "model"), (1e-9, "mean")):
        a_t = torch.tensor(a)
        x = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        eps = shrink_eps(noise, x, a_t, -0.8, 0.2, 1e-3)
        x0_used = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if expect == "model":  # high SNR: the model's (in-range) estimate is kept
            torch.testing.assert_close(x0_used, x0, rtol=0, atol=0.02)
        else:                  # zero SNR: the data mean
            torch.testing.assert_close(x0_used, torch.full_like(x0, -0.8), rtol=0, atol=0.02)
    model = random_model()
    kwargs = dict(num_frames=4, height=16, width=16, steps=3, seeds=[1], progress=False)
    plain = generate(model, [2], **kwargs)
    shrunk = generate(model, [2], x0_prior=(-0.8, 0.2, 1e-3), **kwargs)
    assert (plain - shrunk).abs().max() > 1e-3


def test_bad_requests_and_options_name_the_value(pipe):
    with pytest.raises(InputError, match=r"class 'cat'.*0\.\.9"):
        pipe("cat")
    with pytest.raises(InputError, match="class 10"):
        pipe(10)
    with pytest.raises(InputError, match="frames=0"):
        pipe({"class": 1, "frames": 0})
    with pytest.raises(InputError, match="unknown request key.*'colour'"):
        pipe({"class": 1, "colour": "red"})
    with pytest.raises(OptionError, match="scheduler='euler'"):
        pipe(1, scheduler="euler")
    with pytest.raises(OptionError, match="num_frames=0"):
        pipe(1, num_frames=0)
    with pytest.raises(OptionError, match="x0_prior_mean and x0_prior_var go together"):
        pipe(1, x0_prior_mean=-0.8, x0_prior_var=None)
    with pytest.raises(OptionError, match="formats"):
        pipe(1, formats=["avi"])


def test_writers_odd_sizes_and_rgb(tmp_path):
    video = torch.linspace(-1, 1, 3 * 15 * 17).reshape(3, 1, 15, 17)
    frames, fps = writers.write_mp4(video, tmp_path / "odd.mp4", fps=5) and read_mp4(tmp_path / "odd.mp4")
    assert frames.shape == (3, 16, 18, 3) and fps == pytest.approx(5.0)  # padded to even by one edge row/column
    grid = writers.frame_grid(video, columns=2)
    assert grid.shape == (2 * 16 + 1, 2 * 18 + 1, 3)
    assert writers.to_uint8_frames(torch.full((1, 1, 2, 2), -1.0)).max() == 0
    with pytest.raises(ValueError, match=r"\[T, C, H, W\]"):
        writers.to_uint8_frames(torch.zeros(2, 2, 4, 4))
    with pytest.raises(FileExistsError):
        writers.write_png_grid(video, tmp_path / "g.png") and writers.write_png_grid(video, tmp_path / "g.png")


# ---------------------------------------------------------------------------- diffusers folders and AnimateZero

@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from tests.video_generation.diffusers_tiny import save_tiny_video_model

    root = tmp_path_factory.mktemp("diffusers")
    return {kind: save_tiny_video_model(root / kind.replace("+", "_"), kind) for kind in ("unet3d", "unet2d+adapter")}


@pytest.mark.parametrize("kind", ["unet3d", "unet2d+adapter"])
def test_diffusers_folder_through_pipeline(tiny_folders, kind, tmp_path):
    torch.set_num_threads(1)
    pipe = Pipeline("video_generation", weights=str(tiny_folders[kind]), device="cpu", steps=2, decode_chunk=3)
    assert pipe.video_model.kind == ("unet3d" if kind == "unet3d" else "animatediff")
    assert pipe.config["guidance_scale"] == 7.5 and pipe.config["eta"] == 0.0  # diffusers defaults
    report = pipe({"prompt": "a cat", "seed": 3, "frames": 8}, output=str(tmp_path), formats=["mp4", "png", "pt"])
    assert report.items_written == 1 and sorted(p.name for p in tmp_path.iterdir()) == [
        "a-cat_s3_8f.mp4", "a-cat_s3_8f.png", "a-cat_s3_8f.pt"]  # the MP4 came in 3 chunks, no temporaries left
    frames, _ = read_mp4(tmp_path / "a-cat_s3_8f.mp4")
    saved = torch.load(tmp_path / "a-cat_s3_8f.pt")
    assert frames.shape == (8, 16, 16, 3) and saved.shape == (8, 3, 16, 16)
    # the MP4 holds the video: compared on brightness (H.264's 4:2:0 halves the colour resolution of the noise-like
    # frames a random model makes)
    assert np.abs(frames.astype(float).mean(-1) - writers.to_uint8_frames(saved).astype(float).mean(-1)).mean() < 8
    again = pipe({"prompt": "a cat", "seed": 3, "frames": 8})  # in memory: the same seeded video
    torch.testing.assert_close(again.video, saved)
    assert again.record() == {"name": "a-cat_s3_8f", "seed": 3, "frames": 8, "prompt": "a cat"}
    with pytest.raises(InputError, match="'class' is for our class-conditional VideoUNet.*give 'prompt'"):
        pipe({"class": 3})
    with pytest.raises(InputError, match="needs a non-empty 'prompt'"):
        pipe({"seed": 1})


def test_diffusers_temporal_methods_and_long_videos(tiny_folders):
    torch.set_num_threads(1)
    pipe = Pipeline("video_generation", weights=str(tiny_folders["unet2d+adapter"]), device="cpu", steps=2)
    request = {"prompt": "a dog", "seed": 1, "frames": 8}
    base = pipe(request).video
    freelong = pipe(request, temporal="freelong", freelong_window=2).video
    infinity = pipe(request, temporal="video_infinity", clip_frames=4, infinity_context_frames=2,
                    infinity_global_frames=4).video
    assert freelong.shape == infinity.shape == (8, 3, 16, 16)
    assert (freelong - base).abs().max() > 1e-4 and (infinity - base).abs().max() > 1e-4
    torch.testing.assert_close(pipe(request).video, base)  # processors restored after each call
    with pytest.raises(InputError, match="frames=6.*clip_frames=4"):
        pipe({**request, "frames": 6}, temporal="video_infinity", clip_frames=4, infinity_context_frames=2)
    assert pipe.video_model.max_frames == 32
    long = pipe({**request, "frames": 40}, decode_chunk=16)  # beyond the 32-position table: extended for the run
    assert long.video.shape == (40, 3, 16, 16) and pipe.video_model.max_frames == 32


def test_diffusers_folder_missing_component_names_it(tmp_path):
    from tests.video_generation.diffusers_tiny import save_tiny_video_model

    folder = save_tiny_video_model(tmp_path / "half", "unet3d", skip=("vae",))
    with pytest.raises(FileNotFoundError, match=r"lacks component 'vae'.*AutoencoderKL"):
        Pipeline("video_generation", weights=str(folder), device="cpu")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        Pipeline("video_generation", weights=str(tmp_path), device="cpu")


def test_animatezero_through_pipeline_keeps_the_first_frame(tmp_path):
    from PIL import Image

    from mtp.pipelines.video_generation.pipeline import VideoGenerationPipeline

    torch.set_num_threads(1)
    pixels = (np.add.outer(np.arange(16), np.arange(16)) * 8).astype(np.uint8)
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "first.png")  # RGB file: read as grey for this model
    random_pipe = VideoGenerationPipeline(model=random_model(), device="cpu", height=16, width=16, steps=3)
    out = random_pipe({"class": 3, "image": str(tmp_path / "first.png"), "frames": 6, "seed": 2})
    image = torch.from_numpy(pixels).float()[None] / 127.5 - 1
    assert out.video.shape == (6, 1, 16, 16) and out.image == str(tmp_path / "first.png")
    torch.testing.assert_close(out.video[0], image, rtol=0, atol=1e-5)  # frame 0 is the image exactly
    plain = random_pipe({"class": 3, "frames": 6, "seed": 2})
    assert (plain.video[1:] - out.video[1:]).abs().max() > 1e-3  # the other frames follow it
    concat = random_pipe({"class": 3, "image": image, "frames": 6, "seed": 2}, animatezero_variant="concat")
    torch.testing.assert_close(concat.video[0], image, rtol=0, atol=1e-5)
    # a request file's image is found beside it; the manifest says which image was used
    (tmp_path / "req.yaml").write_text("- {class: 3, image: first.png, frames: 4, name: anim}\n")
    random_pipe(str(tmp_path / "req.yaml"), output=str(tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / "req" / "manifest.json").read_text())
    assert manifest["videos"][0]["image"] == str(tmp_path / "first.png")
    assert read_mp4(tmp_path / "out" / "req" / "anim.mp4")[0].shape[0] == 4
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match=r"big.png is \[C, H, W\] = \[1, 20, 24\].*are \[1, 16, 16\]"):
        random_pipe({"class": 3, "image": str(tmp_path / "big.png")})
    with pytest.raises(InputError, match=r"array is \[C, H, W\] = \[3, 16, 16\].*are \[1, 16, 16\]"):
        random_pipe({"class": 3, "image": np.zeros((16, 16, 3), np.uint8)})
    with pytest.raises(InputError, match="'prompt' needs a text-to-video diffusers model"):
        random_pipe({"prompt": "a cat"})
    with pytest.raises(InputError, match="AnimateZero.*temporal=.plain."):  # the run reports the option error
        random_pipe({"class": 3, "image": image}, temporal="freelong")


def test_animatezero_on_animatediff_through_pipeline(tiny_folders, tmp_path):
    from PIL import Image

    from mtp.pipelines.video_generation.diffusers_models import decode_latents, encode_image

    torch.set_num_threads(1)
    pipe = Pipeline("video_generation", weights=str(tiny_folders["unet2d+adapter"]), device="cpu", steps=2)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)).save(tmp_path / "first.png")
    out = pipe({"prompt": "a dog", "image": str(tmp_path / "first.png"), "frames": 8, "seed": 1})
    assert out.video.shape == (8, 3, 24, 16)  # the image's size sets the frame size
    # frame 0 is the VAE's decoding of the image's latent (AnimateZero pins the latent exactly)
    image = torch.from_numpy(np.array(Image.open(tmp_path / "first.png"))).permute(2, 0, 1).float() / 127.5 - 1
    latent = encode_image(pipe.video_model, image)
    _, decoded = next(decode_latents(pipe.video_model, latent[:, :, None]))
    torch.testing.assert_close(out.video[0], decoded[0, 0], rtol=0, atol=1e-4)
    with pytest.raises(InputError, match=r"\[3, 24, 16\].*are \[3, 16, 16\]"):
        pipe({"prompt": "a dog", "image": str(tmp_path / "first.png")}, height=16, width=16)


def test_mp4_writer_streams_chunks_and_leaves_nothing_on_error(tmp_path):
    video = torch.linspace(-1, 1, 6 * 16 * 16).reshape(6, 1, 16, 16)
    with writers.Mp4Writer(tmp_path / "c.mp4", fps=4) as mp4:
        mp4.write(video[:4])
        mp4.write(video[4:])
    assert mp4.frames == 6 and read_mp4(tmp_path / "c.mp4")[0].shape == (6, 16, 16, 3)
    with pytest.raises(RuntimeError, match="decoder failed"):
        with writers.Mp4Writer(tmp_path / "d.mp4") as mp4:
            mp4.write(video[:2])
            raise RuntimeError("decoder failed")
    with pytest.raises(ValueError, match="one frame size"):
        with writers.Mp4Writer(tmp_path / "e.mp4") as mp4:
            mp4.write(video[:2])
            mp4.write(torch.zeros(1, 1, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4"]  # no partial files or temporaries
