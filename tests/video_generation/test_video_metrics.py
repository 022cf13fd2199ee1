"""Weight-free video metrics: known values, properties, torchmetrics' SSIM where installed, and every temporal metric
on real clips (MovingDigits test clips, frames of real mp4 files) against frame-shuffled copies of them."""
import importlib.util

import numpy as np
import pytest
import torch

from mtp.datasets.video_generation import MovingDigits, video_clips
from mtp.pipelines.video_generation import metrics as M

pytestmark = pytest.mark.usefixtures("one_thread")


def _shuffled(video: torch.Tensor, seed: int = 0) -> torch.Tensor:
    perm = torch.randperm(video.shape[0], generator=torch.Generator().manual_seed(seed))
    if torch.equal(perm, torch.arange(len(perm))):
        perm = perm.flip(0)
    return video[perm]


@pytest.fixture(scope="module")
def digit_clips():
    data = MovingDigits("test", num_items=6, num_frames=12)
    return [data[i]["video"] for i in range(len(data))]


@pytest.fixture(scope="module")
def mp4_clips(data_dir):
    folder = data_dir / "video"
    clips = []
    for name in ("bikes.mp4", "carphone_pristine.mp4", "big_buck_bunny_small.mp4"):
        if not (folder / name).is_file():
            pytest.skip(f"needs {folder / name}")
        clips.append(video_clips(folder / name, num_frames=8, size=48, max_clips=1)[0])
    return clips


# -------------------------------------------------------------------------------------- shuffled is worse
@pytest.mark.parametrize("source", ["digit_clips", "mp4_clips"])
def test_shuffled_frames_score_worse(source, request):
    clips = request.getfixturevalue(source)
    ssim_real, ssim_shuffled = [], []
    for clip in clips:
        mixed = _shuffled(clip)
        assert M.warping_error(mixed) > M.warping_error(clip)
        assert M.warping_error(mixed, error="squared") > M.warping_error(clip, error="squared")
        assert M.temporal_flicker(mixed) > M.temporal_flicker(clip)
        ssim_real.append(M.ssim_to_previous(clip))
        ssim_shuffled.append(M.ssim_to_previous(mixed))
    # a clip whose digit barely overlaps itself between frames can tie; the average must not
    assert np.mean(ssim_shuffled) < np.mean(ssim_real)
    assert sum(s < r for s, r in zip(ssim_shuffled, ssim_real)) >= len(clips) - 1


def test_warping_error_follows_real_motion(digit_clips, mp4_clips):
    # along the flow the warped frame nearly matches; a plain frame difference does not (bikes.mp4 pans; the
    # other two mp4 files barely move, so their flicker is mostly compression noise the flow cannot remove)
    for clip in digit_clips + mp4_clips[:1]:
        assert M.warping_error(clip) < 0.5 * M.temporal_flicker(clip)
        assert M.flow_coverage(clip) > 0.8
        assert M.flow_coverage(_shuffled(clip)) < M.flow_coverage(clip)
    per_pair = M.warping_error(digit_clips[0], reduction="none")
    assert per_pair.shape == (11,) and np.isfinite(per_pair).all()
    assert M.warping_error(digit_clips[0], flow_from=digit_clips[0]) == M.warping_error(digit_clips[0])


def test_warping_error_on_a_known_translation():
    rng = np.random.default_rng(0)
    texture = torch.from_numpy(rng.random((1, 64, 64))).float()
    texture = torch.nn.functional.avg_pool2d(texture[None], 5, 1, 2)[0] * 2 - 1   # smooth, so flow is defined
    video = torch.stack([torch.roll(texture, shifts=2 * t, dims=-1) for t in range(6)])
    assert M.warping_error(video) < 0.1 * M.temporal_flicker(video)
    still = texture[None].expand(5, -1, -1, -1)
    assert M.warping_error(still) < 1e-3 and M.temporal_flicker(still) == 0.0   # Farneback's residual flow
    assert M.flow_coverage(still) > 0.99
    assert M.warping_error(torch.full((3, 1, 16, 16), 0.5)) == 0.0


def test_flow_from_another_video_changes_the_warp(digit_clips):
    clip, other = digit_clips[0], digit_clips[1]
    assert M.warping_error(clip, flow_from=other) > M.warping_error(clip)
    with pytest.raises(ValueError, match="flow_from must have the video's frames and size"):
        M.warping_error(clip, flow_from=other[:5])


# --------------------------------------------------------------------------------------------- flicker
def test_flicker_known_value():
    video = torch.full((4, 3, 8, 8), -1.0)
    video[1] = 0.0            # 0 -> 0.5 -> 0 -> 1 on the [0, 1] scale
    video[3] = 1.0
    assert M.temporal_flicker(video) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert M.temporal_flicker(video, reduction="none") == pytest.approx([0.5, 0.5, 1.0])


# ------------------------------------------------------------------------------------------------ SSIM
def test_ssim_known_values_and_properties(digit_clips):
    frames = (digit_clips[0] + 1) / 2                                    # [T, 1, H, W] in [0, 1]
    assert M.ssim(frames, frames).numpy() == pytest.approx(1.0)
    # constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1)
    a, b = torch.full((1, 1, 16, 16), 0.25), torch.full((1, 1, 16, 16), 0.75)
    c1 = (0.01 * 1.0) ** 2
    assert float(M.ssim(a, b)) == pytest.approx((2 * 0.25 * 0.75 + c1) / (0.25 ** 2 + 0.75 ** 2 + c1), rel=1e-12)
    assert torch.allclose(M.ssim(frames[1:], frames[:-1]), M.ssim(frames[:-1], frames[1:]))   # symmetric
    rng = torch.Generator().manual_seed(0)
    scores = [float(M.ssim(frames[:1], (frames[:1] + s * torch.randn(frames[:1].shape, generator=rng)).clamp(0, 1)))
              for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > -1.0
    assert float(M.ssim(1 - frames[:1], frames[:1])) < 0.2                 # inverted image
    taps = M.gaussian_window()
    assert taps.shape == (11,) and float(taps.sum()) == pytest.approx(1.0) and torch.equal(taps, taps.flip(0))
    with pytest.raises(ValueError, match="at least 11x11"):
        M.ssim(torch.zeros(1, 1, 10, 20), torch.zeros(1, 1, 10, 20))


@pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None, reason="torchmetrics not installed")
def test_ssim_matches_torchmetrics(digit_clips, mp4_clips):
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    for clip in (digit_clips[0], mp4_clips[0]):
        x = ((clip[1:] + 1) / 2).double()
        y = ((clip[:-1] + 1) / 2).double()
        theirs, full_map = tm_ssim(x, y, data_range=1.0, reduction="none", return_full_image=True)
        assert torch.allclose(M.ssim(x, y, padding="reflect"), theirs, atol=1e-8)
        # torchmetrics' map without its padded border is the 'valid' map
        assert torch.allclose(M.ssim(x, y), full_map[..., 5:-5, 5:-5].mean((1, 2, 3)), atol=1e-8)


def test_ssim_over_time(digit_clips):
    clip = digit_clips[0]
    assert M.ssim_to_first(clip[:1].expand(4, -1, -1, -1)) == pytest.approx(1.0)
    per_frame = M.ssim_to_first(clip, reduction="none")
    assert per_frame.shape == (11,)
    assert per_frame[0] == pytest.approx(float(M.ssim(clip[1:2] / 2 + 0.5, clip[:1] / 2 + 0.5)))
    previous = M.ssim_to_previous(clip, reduction="none")
    assert previous[0] == pytest.approx(per_frame[0]) and M.ssim_to_previous(clip) == pytest.approx(previous.mean())


# ------------------------------------------------------------------------------------------- inputs
def test_uint8_and_float_layouts_agree(mp4_clips):
    clip = mp4_clips[1]
    as_u8 = ((clip + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)   # [T, H, W, C]
    as_float = as_u8.permute(0, 3, 1, 2).float() / 127.5 - 1
    for metric in (M.warping_error, M.temporal_flicker, M.ssim_to_previous, M.ssim_to_first, M.drift):
        assert metric(as_u8) == pytest.approx(metric(as_float), abs=1e-6)
        assert metric(as_u8.numpy()) == pytest.approx(metric(as_u8), abs=1e-12)


@pytest.mark.parametrize("video, message", [
    (torch.zeros(4, 3, 16, 16) + 1.5, r"must lie in \[-1, 1\]"),
    (torch.zeros(4, 16, 16, 3), r"float video must be \[T, C, H, W\].*channels last"),
    (torch.zeros(4, 3, 16, 16, dtype=torch.uint8), r"uint8 video must be \[T, H, W, C\].*channels first"),
    (torch.zeros(3, 16, 16), "expected 4 dims"),
    (torch.zeros(4, 3, 16, 16, dtype=torch.int32), "got dtype int32"),
    (torch.full((4, 1, 16, 16), float("nan")), "non-finite"),
])
def test_bad_videos(video, message):
    with pytest.raises(ValueError, match=message):
        M.temporal_flicker(video)


def test_too_few_frames_and_bad_options(digit_clips):
    with pytest.raises(ValueError, match="needs at least 2 frames, got 1"):
        M.warping_error(digit_clips[0][:1])
    with pytest.raises(ValueError, match="error must be one of"):
        M.warping_error(digit_clips[0], error="l1")
    with pytest.raises(ValueError, match="reduction must be one of"):
        M.ssim_to_previous(digit_clips[0], reduction="sum")


# ----------------------------------------------------------------------------------------------- drift
def test_drift(digit_clips, mp4_clips):
    still = digit_clips[0][:1].expand(8, -1, -1, -1)
    assert M.drift(still, window=4) == 0.0
    # a brightness ramp of 0.01 per frame on the [0, 1] scale: the window means lie 6 frames apart
    ramp = torch.stack([torch.full((1, 8, 8), -0.8 + 0.02 * t) for t in range(10)])
    assert M.drift(ramp, window=4) == pytest.approx(0.06)
    assert M.drift(ramp.flip(0), window=4) == pytest.approx(0.06)
    flat = M.drift(ramp, window=4, features=lambda w: w.flatten(1))
    assert flat == pytest.approx(0.12 * 8)                     # |0.12| over 64 features on the [-1, 1] scale
    clip = digit_clips[0]
    assert M.drift(clip, window=2) > 0.0
    long_clip = mp4_clips[0]
    assert M.drift(long_clip, window=2, features=lambda w: w.mean((2, 3))) > 0.0
    with pytest.raises(ValueError, match="overlap in a 8-frame video"):
        M.drift(long_clip, window=5)
    with pytest.raises(ValueError, match=r"features must map a \[2, C, H, W\] window to \[2, D\]"):
        M.drift(long_clip, window=2, features=lambda w: w.mean())


# ------------------------------------------------------------------------------------ Fréchet distance
def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert M.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    centred = a - a.mean(0)
    sigma = np.cov(centred, rowvar=False)
    assert M.frechet_distance(centred, 2 * centred) == pytest.approx(np.trace(sigma), rel=1e-6)
    b = rng.normal(loc=0.3, size=(150, 5))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr(sqrtm(S_a S_b)) = sum of sqrt of the eigenvalues of S_a S_b (real and >= 0)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s_a @ s_b).real, 0, None)).sum()
    d = a.mean(0) - b.mean(0)
    expected = d @ d + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert M.frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)
    one_d = M.frechet_distance(a[:, :1], b[:, :1])
    m1, m2, v1, v2 = a[:, 0].mean(), b[:, 0].mean(), a[:, 0].var(ddof=1), b[:, 0].var(ddof=1)
    assert one_d == pytest.approx((m1 - m2) ** 2 + v1 + v2 - 2 * np.sqrt(v1 * v2), rel=1e-6)
    assert M.frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rank_deficient_and_errors():
    rng = np.random.default_rng(1)
    few = rng.normal(size=(4, 10))                     # covariances of rank 3 in 10 dims
    value = M.frechet_distance(few, rng.normal(size=(5, 10)))
    assert np.isfinite(value)
    with pytest.raises(ValueError, match="feature sizes differ"):
        M.frechet_distance(few, few[:, :3])
    with pytest.raises(ValueError, match=r"feats_b must be \[N, D\] features with N >= 2"):
        M.frechet_distance(few, few[:1])


def test_frechet_distance_on_real_clips_sees_shuffling():
    # a weight-free temporal feature: the per-pair flicker of each clip (FVD-style, on features given)
    def features(clips):
        return np.stack([M.temporal_flicker(c, reduction="none") for c in clips])

    train = MovingDigits("train", num_items=24, num_frames=6)
    test = MovingDigits("test", num_items=24, num_frames=6)
    real_a = features([train[i]["video"] for i in range(24)])
    real_b = [test[i]["video"] for i in range(24)]
    assert M.frechet_distance(real_a, features(real_b)) < M.frechet_distance(
        real_a, features([_shuffled(c, seed=i) for i, c in enumerate(real_b)]))


# ---------------------------------------------------------------------------------- class agreement
def test_class_agreement_over_time():
    assert M.class_agreement_over_time([1, 1, 2, 1]) == 0.75
    assert M.class_agreement_over_time([1, 1, 2, 1], target=2) == 0.25
    assert M.class_agreement_over_time(torch.tensor([3, 5, 5, 3])) == 0.5            # tie: smallest class
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 0.5]])       # argmax 1, 0, 1
    assert M.class_agreement_over_time(logits) == pytest.approx(2 / 3)
    batch = np.array([[7, 7, 7, 7], [1, 2, 2, 2]])
    assert M.class_agreement_over_time(batch, target=[7, 1], reduction="none").tolist() == [1.0, 0.25]
    assert M.class_agreement_over_time(batch) == pytest.approx((1.0 + 0.75) / 2)
    assert M.class_agreement_over_time(np.zeros((2, 4, 3)), target=0) == 1.0
    with pytest.raises(ValueError, match="2 targets for 3 clips"):
        M.class_agreement_over_time(np.zeros((3, 4), dtype=int), target=[0, 1])
    with pytest.raises(ValueError, match="class ids must be >= 0"):
        M.class_agreement_over_time([0, -1])
    with pytest.raises(ValueError, match=r"float scores must be \[T, K\] or \[N, T, K\]"):
        M.class_agreement_over_time(np.zeros(4))
    with pytest.raises(ValueError, match="target must be an int or N ints"):
        M.class_agreement_over_time([0, 1], target=0.5)
