"""Target evaluation: the frame classifier trained on real frames, score_videos on real MovingDigits clips against
frame-shuffled and drifting copies, save/load, bad input, and the weights-on-disk metrics (I3D-FVD, CLIP)."""
import numpy as np
import pytest
import torch

from mtp.pipelines.video_generation import evaluation as E

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier():
    torch.set_num_threads(1)
    # a short run without the jitter (a few seconds); the full default run (with it) reaches about 0.99 test frame
    # accuracy, 0.98 on jittered test frames
    return E.train_frame_classifier(num_clips=1500, num_frames=8, epochs=2, lr=4e-3, test_clips=100, seed=0,
                                    augment=False)


@pytest.fixture(scope="module")
def clips():
    videos, labels = E.real_reference_clips(12, 12, split="test", seed=3)
    reference, ref_labels = E.real_reference_clips(16, 12, split="test", seed=4)
    return videos, labels, reference, ref_labels


def _shuffled(videos: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for clip in videos:
        perm = torch.randperm(clip.shape[0], generator=g)
        if torch.equal(perm, torch.arange(len(perm))):
            perm = perm.flip(0)
        out.append(clip[perm])
    return torch.stack(out)


def test_classifier_learns_real_frames(classifier, clips):
    assert classifier.info["test_frame_accuracy"] > 0.95
    videos, labels, _, _ = clips
    preds = E.frame_predictions(videos, classifier)
    assert preds.shape == videos.shape[:2] and preds.dtype == torch.long
    assert (preds == labels[:, None]).float().mean() > 0.9
    feats = classifier.features(videos[0])
    assert feats.shape == (12, classifier.settings["feature_dim"]) and torch.isfinite(feats).all()


def test_score_keys_and_real_against_shuffled(classifier, clips):
    videos, labels, reference, ref_labels = clips
    real = E.score_videos(videos, labels, classifier, reference, ref_labels, min_real_clips=16)
    mixed = E.score_videos(_shuffled(videos), labels, classifier, reference, ref_labels, min_real_clips=16)
    assert set(real) == set(mixed) == {
        "num_clips", "num_frames", "drift_window", "feature_mode", "error", "class_agreement", "temporal_consistency",
        *E.TEMPORAL_KEYS, *(f"real_{k}" for k in ("class_agreement", "temporal_consistency", *E.TEMPORAL_KEYS)),
        "real_num_clips", "real_num_frames", "warping_error_ratio", "temporal_flicker_ratio", "frechet_distance"}
    assert real["num_clips"] == 12 and real["num_frames"] == 12 and real["drift_window"] == 3
    # classifier figures: near-perfect on real clips, blind to the frame order by design
    assert real["class_agreement"] > 0.9 and real["temporal_consistency"] > 0.9
    assert mixed["class_agreement"] == real["class_agreement"]
    # temporal figures: shuffling is worse on each, and the real clips sit at the real reference's level
    assert mixed["warping_error"] > 10 * real["warping_error"]
    assert mixed["flow_coverage"] < real["flow_coverage"]
    assert mixed["temporal_flicker"] > 1.5 * real["temporal_flicker"]
    assert mixed["ssim_to_previous"] < real["ssim_to_previous"]
    assert real["warping_error_ratio"] < 3 < mixed["warping_error_ratio"]
    assert 0.7 < real["temporal_flicker_ratio"] < 1.3 < mixed["temporal_flicker_ratio"]
    assert mixed["frechet_distance"] > real["frechet_distance"]


def test_clip_features_see_the_frame_order(classifier, clips):
    videos = clips[0]
    mixed = _shuffled(videos)
    mean = E.clip_features(videos, classifier, "mean")
    torch.testing.assert_close(E.clip_features(mixed, classifier, "mean"), mean)   # the order is invisible
    d = classifier.settings["feature_dim"]
    both = E.clip_features(videos, classifier)
    assert both.shape == (12, 2 * d)
    torch.testing.assert_close(both[:, :d], mean)
    assert (E.clip_features(mixed, classifier)[:, d:].sum(1) > both[:, d:].sum(1)).all()   # bigger jumps
    assert E.clip_features(videos, classifier, "concat").shape == (12, 12 * d)


def test_drift_and_ssim_to_first_see_content_change(classifier, clips):
    videos, labels, _, _ = clips
    still = videos[:, :1].expand_as(videos).contiguous()          # frame 0 held: nothing drifts
    frozen = E.score_videos(still, labels, classifier)
    assert frozen["drift_pixels"] == 0.0 and frozen["drift_features"] == pytest.approx(0.0, abs=1e-6)
    assert frozen["ssim_to_first"] == pytest.approx(1.0) and frozen["warping_error"] < 1e-3
    # the second half of each clip replaced by a clip of another digit: the content drifts
    other = torch.roll(videos, 1, dims=0)
    switched = torch.cat([videos[:, :6], other[:, 6:]], dim=1)
    keep = labels != torch.roll(labels, 1)
    real = E.score_videos(videos[keep], labels[keep], classifier)
    drifting = E.score_videos(switched[keep], labels[keep], classifier)
    assert drifting["drift_features"] > real["drift_features"]
    assert drifting["class_agreement"] < real["class_agreement"] - 0.3
    assert drifting["temporal_consistency"] < real["temporal_consistency"]


def test_save_and_load(classifier, clips, tmp_path):
    path = classifier.save(tmp_path / "clf.pt")
    again = E.load_frame_classifier(path)
    assert again.settings == classifier.settings and again.info == classifier.info
    frames = clips[0][0]
    assert torch.equal(again.predict(frames), classifier.predict(frames))
    torch.testing.assert_close(again.features(frames), classifier.features(frames))
    with pytest.raises(FileExistsError, match="clf.pt exists"):
        classifier.save(path)
    classifier.save(path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no frame classifier there"):
        E.load_frame_classifier(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a frame classifier file"):
        E.load_frame_classifier(tmp_path / "other.pt")


def test_augment_frames(clips):
    frames = clips[0][0]                                                   # [T, 1, 32, 32], background -1
    out = E.augment_frames(frames, torch.Generator().manual_seed(0))
    again = E.augment_frames(frames, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.shape == frames.shape
    assert out.min() >= -1 and out.max() <= 1
    corner = out[..., :4, :4].mean((1, 2, 3))                              # the background moved up
    assert (corner > -1.0).all() and (corner < -0.2).all()
    # the digit stays where it was: each jittered frame still correlates with its source
    a, b = out.flatten(1), frames.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    assert (torch.nn.functional.cosine_similarity(a, b) > 0.8).all()


def test_training_is_seeded():
    a = E.train_frame_classifier(num_clips=40, num_frames=4, steps=3, test_clips=4, seed=5, batch_size=16)
    b = E.train_frame_classifier(num_clips=40, num_frames=4, steps=3, test_clips=4, seed=5, batch_size=16)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("videos, message", [
    (torch.zeros(12, 1, 32, 32), r"expected \[N, T, C, H, W\] videos.*add a batch axis"),
    (torch.zeros(2, 12, 3, 32, 32), r"frames must be \[1, 32, 32\] for this classifier"),
    (torch.zeros(2, 12, 1, 24, 24), r"frames must be \[1, 32, 32\]"),
    (torch.zeros(2, 1, 1, 32, 32), "at least 2 frames"),
    (torch.full((2, 12, 1, 32, 32), 2.0), r"must lie in \[-1, 1\]"),
    (torch.full((2, 12, 1, 32, 32), float("nan")), "non-finite"),
    (torch.zeros(2, 12, 1, 32, 32, dtype=torch.uint8), "expected float values"),
    ([[0.0]], "expected a tensor"),
])
def test_bad_videos(classifier, videos, message):
    with pytest.raises(ValueError, match=message):
        E.score_videos(videos, 0, classifier)


@pytest.mark.parametrize("labels, message", [
    ([1, 2, 3], r"expected an int or 2 ints \(one per clip\)"),
    ([0, 10], r"class ids must be in \[0, 10\), got \[10\]"),
    (-1, r"class ids must be in \[0, 10\)"),
    ([0.0, 1.0], "expected integer class ids"),
    (True, "expected an int or 2 ints"),
])
def test_bad_labels(classifier, clips, labels, message):
    with pytest.raises(ValueError, match=message):
        E.score_videos(clips[0][:2], labels, classifier)


def test_bad_options(classifier, clips):
    videos, labels, reference, ref_labels = clips
    with pytest.raises(ValueError, match="real_videos has 16 clips, at least min_real_clips=64"):
        E.score_videos(videos, labels, classifier, reference)
    with pytest.raises(ValueError, match=r"drift_window must be an int in \[1, T/2 = 6\]"):
        E.score_videos(videos, labels, classifier, drift_window=7)
    with pytest.raises(ValueError, match="feature_mode must be one of"):
        E.score_videos(videos, labels, classifier, feature_mode="sum")
    with pytest.raises(ValueError, match="'concat' needs real clips of the same length"):
        E.score_videos(videos, labels, classifier, reference[:, :8], feature_mode="concat", min_real_clips=16)
    with pytest.raises(ValueError, match="error must be one of"):
        E.score_videos(videos, labels, classifier, error="l2")
    with pytest.raises(ValueError, match="real_labels given without real_videos"):
        E.score_videos(videos, labels, classifier, real_labels=ref_labels)
    with pytest.raises(ValueError, match="multiple of 8"):
        E.FrameClassifier(image_size=20)


# ------------------------------------------------------------------------ weights the user brings (or not)
def test_i3d_and_clip_name_the_missing_file(tmp_path, clips):
    videos, _, reference, _ = clips
    with pytest.raises(FileNotFoundError, match=r"i3d_torchscript.pt: missing; I3D-FVD needs this file"):
        E.i3d_frechet_distance(videos, reference, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope.pt: missing"):
        E.load_i3d_detector(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="clip: missing; CLIP frame consistency needs a local"):
        E.clip_frame_consistency(videos, tmp_path / "clip")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json: missing"):
        E.clip_frame_consistency(videos, tmp_path / "clip")


class _PooledDetector(torch.nn.Module):
    """A TorchScript stand-in with the I3D detector's call signature (the real file cannot be fetched here)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = True) -> torch.Tensor:
        assert x.dim() == 5 and x.shape[1] == 3 and x.shape[3] == 224 and x.shape[4] == 224
        diff = (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 3, 4))      # [N, T-1] frame changes
        return torch.cat([x.mean((1, 3, 4)), diff], dim=1)


def test_i3d_path_with_a_torchscript_file(tmp_path, clips):
    videos, _, reference, _ = clips
    inputs = E.i3d_inputs(videos[:2])
    assert inputs.shape == (2, 3, 12, 224, 224) and inputs.min() >= -1 and inputs.max() <= 1
    torch.testing.assert_close(inputs[:, 0], inputs[:, 2])                    # grey repeated to RGB
    torch.jit.script(_PooledDetector()).save(str(tmp_path / E.I3D_FILENAME))
    real = E.i3d_frechet_distance(videos, reference, tmp_path, batch_size=5)
    mixed = E.i3d_frechet_distance(_shuffled(videos), reference, tmp_path / E.I3D_FILENAME)
    assert np.isfinite(real) and mixed > real


def test_clip_frame_consistency_with_a_local_folder(tmp_path, clips):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    videos = clips[0][:3]
    out = E.clip_frame_consistency(videos, tmp_path)
    assert set(out) == {"clip_consistency_previous", "clip_consistency_first"}
    assert all(-1.0 <= v <= 1.0 for v in out.values())
    still = E.clip_frame_consistency(videos[:, :1].expand_as(videos), tmp_path)
    assert still["clip_consistency_previous"] == pytest.approx(1.0) == still["clip_consistency_first"]
    assert out["clip_consistency_previous"] < 1.0


def test_frame_classifier_loads_before_training(classifier, tmp_path):
    path = classifier.save(tmp_path / "clf.pt")
    loaded = E.frame_classifier(path)                 # present: loaded, not retrained
    assert loaded.info == classifier.info
    assert E.default_classifier_path(3).name == "frame_classifier_moving_digits_v2_s3.pt"
    fresh = E.frame_classifier(tmp_path / "new.pt", num_clips=40, num_frames=4, steps=2, test_clips=4)
    assert (tmp_path / "new.pt").is_file() and fresh.info["steps"] == 2
