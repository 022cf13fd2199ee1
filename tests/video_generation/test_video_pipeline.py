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
