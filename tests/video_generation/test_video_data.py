"""Video generation data: MovingDigits (real sklearn handwriting, fixed stratified split, seeded bouncing motion) and
clips read from the real mp4 files in ../shared/data/video, with bad input named."""
import re

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtp.datasets.video_generation import (MovingDigits, VideoFileError, bounce_trajectory, digit_sprites,
                                           read_video_frames, source_indices, video_clips)

pytestmark = pytest.mark.usefixtures("one_thread")

ID = re.compile(r"^(train|test)-e(\d+)-(\d{6})-d(\d+)(?:\+(\d+))?$")


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def _sources(item) -> list[int]:
    match = ID.match(item["id"])
    assert match, item["id"]
    return [int(g) for g in match.groups()[3:] if g is not None]


# ------------------------------------------------------------------------------------------------ split
def test_split_is_fixed_disjoint_and_stratified():
    train, test = source_indices("train"), source_indices("test")
    _, labels = _digits()
    assert len(train) + len(test) == len(labels) == 1797
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(1797))
    for c in range(10):
        n = int((labels == c).sum())
        assert int((labels[test] == c).sum()) == round(0.2 * n)
    assert np.array_equal(source_indices("test"), test)          # no hidden state
    with pytest.raises(ValueError, match="split must be one of"):
        source_indices("val")


def test_test_clips_use_only_test_handwriting():
    _, labels = _digits()
    for split in ("train", "test"):
        allowed = set(source_indices(split).tolist())
        data = MovingDigits(split, num_items=40, num_frames=2, num_digits=2)
        for i in range(len(data)):
            item = data[i]
            src = _sources(item)
            assert len(src) == 2 and src[0] != src[1] and set(src) <= allowed
            assert item["label"] == labels[src[0]]
            assert item["labels"].tolist() == [labels[s] for s in src]


# ------------------------------------------------------------------------------------------------ items
def test_item_format_and_range():
    data = MovingDigits("train", num_items=5)
    item = data[0]
    assert set(item) == {"video", "label", "labels", "id"}
    video = item["video"]
    assert video.shape == (16, 1, 32, 32) and video.dtype == torch.float32
    assert video.min() == -1.0 and video.max() <= 1.0 and video.max() > 0.5   # black canvas, bright ink
    assert isinstance(item["label"], int) and 0 <= item["label"] <= 9
    assert ID.match(item["id"]).group(1) == "train"
    other = MovingDigits("test", num_items=2, num_frames=5, canvas=48, digit_size=24)[1]["video"]
    assert other.shape == (5, 1, 48, 48)


def test_items_are_pure_functions_of_seed_split_epoch_index():
    a, b = MovingDigits("train", num_items=6, seed=3), MovingDigits("train", num_items=6, seed=3)
    later = [b[i] for i in reversed(range(6))][::-1]            # access order does not matter
    for i in range(6):
        assert torch.equal(a[i]["video"], later[i]["video"]) and a[i]["id"] == later[i]["id"]
        assert torch.equal(a[i]["video"], a[i]["video"])
    c = MovingDigits("train", num_items=6, seed=4)
    assert not all(torch.equal(a[i]["video"], c[i]["video"]) for i in range(6))
    assert a[0]["id"] != a[1]["id"]


def test_redraw_each_epoch_train_only():
    fixed = MovingDigits("train", num_items=4)
    redraw = MovingDigits("train", num_items=4, redraw_each_epoch=True)
    first = [redraw[i]["video"] for i in range(4)]
    assert all(torch.equal(first[i], fixed[i]["video"]) for i in range(4))   # epoch 0 is the fixed draw
    redraw.set_epoch(1)
    assert not any(torch.equal(first[i], redraw[i]["video"]) for i in range(4))
    assert redraw[0]["id"].startswith("train-e1-")
    redraw.set_epoch(0)
    assert all(torch.equal(first[i], redraw[i]["video"]) for i in range(4))
    fixed.set_epoch(5)                                                        # a no-op without redraw
    assert torch.equal(fixed[0]["video"], first[0])
    with pytest.raises(ValueError, match="train split only"):
        MovingDigits("test", redraw_each_epoch=True)


def test_motion_is_constant_velocity_with_bounces():
    data = MovingDigits("test", num_items=30, num_frames=24, speed=(2.0, 3.0))
    limit = data.canvas - data.digit_size
    bounced = 0
    for i in range(len(data)):
        picks, paths = data.draw(i)
        path = paths[0]
        assert path.min() >= 0.0 and path.max() <= limit
        steps = np.diff(path, axis=0)
        speeds = np.abs(steps)
        for axis in range(2):   # each component keeps its magnitude except on a step that hits a wall
            hit = (path[1:, axis] == 0.0) | (path[1:, axis] == limit)
            free = speeds[~hit, axis]
            if len(free):
                assert np.allclose(free, free[0])
            flips = np.sign(steps[1:, axis]) * np.sign(steps[:-1, axis]) < 0
            bounced += int(flips.sum())
            assert not (flips & ~hit[:-1]).any()                 # the direction flips only at a wall
        # the frame shows the upscaled digit at the rounded corner
        video = data[i]["video"]
        s = data.digit_size
        for t in (0, 7, 23):
            r, c = np.rint(path[t]).astype(int)
            assert torch.allclose(video[t, 0, r:r + s, c:c + s], data.sprites[picks[0]] * 2 - 1)
            outside = video[t, 0].clone()
            outside[r:r + s, c:c + s] = -1
            assert (outside == -1).all()
    assert bounced > 0


def test_bounce_trajectory_clamps_and_flips():
    path = bounce_trajectory(np.array([0.0, 0.0]), np.array([0.0, 3.0]), 7, 5.0)
    assert path[:, 1].tolist() == [0, 3, 5, 2, 0, 3, 5]
    assert path[:, 0].tolist() == [0] * 7


def test_two_digits_combine_by_maximum():
    data = MovingDigits("train", num_items=3, num_digits=2, canvas=48, digit_size=24)
    picks, paths = data.draw(2)
    video = data[2]["video"]
    s = data.digit_size
    expected = torch.zeros(16, 48, 48)
    for k in range(2):
        for t in range(16):
            r, c = np.rint(paths[k, t]).astype(int)
            expected[t, r:r + s, c:c + s] = torch.maximum(expected[t, r:r + s, c:c + s], data.sprites[picks[k]])
    assert torch.allclose(video[:, 0], expected * 2 - 1)


def test_sprites_are_upscaled_real_digits():
    images, _ = _digits()
    idx = [0, 5, 100]
    native = digit_sprites(idx, 8)
    assert torch.allclose(native, torch.from_numpy(images[idx] / 16.0).float())
    nearest = digit_sprites(idx, 16, "nearest")
    assert torch.allclose(nearest, torch.from_numpy(np.kron(images[idx] / 16.0, np.ones((2, 2)))).float())
    bilinear = digit_sprites(idx, 16)
    assert bilinear.shape == (3, 16, 16) and 0 <= bilinear.min() and bilinear.max() <= 1
    assert torch.allclose(bilinear.mean((1, 2)), native.mean((1, 2)), atol=0.03)   # ink is kept
    assert not torch.equal(bilinear, nearest)


def test_default_collate_batches_items():
    batch = next(iter(DataLoader(MovingDigits("train", num_items=4, num_frames=4), batch_size=4)))
    assert batch["video"].shape == (4, 4, 1, 32, 32)
    assert batch["label"].shape == (4,) and len(batch["id"]) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="val"), "split must be one of"),
    (dict(num_items=0), "num_items must be an int >= 1"),
    (dict(num_frames=0), "num_frames must be an int >= 1"),
    (dict(num_frames=2.5), "num_frames must be an int >= 1"),
    (dict(digit_size=4), "digit_size must be an int >= 8"),
    (dict(canvas=16, digit_size=24), r"digit_size \(24\) must be <= canvas \(16\)"),
    (dict(num_digits=3), "num_digits must be 1 or 2, got 3"),
    (dict(speed=(3.0, 1.0)), "speed must be"),
    (dict(speed=(-1.0, 1.0)), "speed must be"),
    (dict(interpolation="cubic"), "interpolation must be one of"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MovingDigits(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError, match="index 3 out of range for 3 clips"):
        MovingDigits("test", num_items=3)[3]


# ------------------------------------------------------------------------------------------- real video
@pytest.fixture(scope="module")
def videos(data_dir):
    folder = data_dir / "video"
    if not (folder / "bikes.mp4").is_file() or not (folder / "carphone_pristine.mp4").is_file():
        pytest.skip(f"needs bikes.mp4 and carphone_pristine.mp4 in {folder}")
    return folder


def test_video_clips_native_frames(videos):
    clips = video_clips(videos / "carphone_pristine.mp4", num_frames=4, max_clips=2)
    assert clips.shape == (2, 4, 3, 144, 176) and clips.dtype == torch.float32
    frames, rate = read_video_frames(videos / "carphone_pristine.mp4", max_frames=8)
    assert frames.dtype == np.uint8 and frames.shape == (8, 144, 176, 3) and 29 < rate < 31
    expected = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(clips.reshape(8, 3, 144, 176), expected)
    assert clips.min() >= -1 and clips.max() <= 1


def test_video_clips_resize_and_crop(videos):
    frames, _ = read_video_frames(videos / "bikes.mp4", max_frames=1)          # 640 x 272
    square = video_clips(videos / "bikes.mp4", num_frames=2, size=32, max_clips=1)
    assert square.shape == (1, 2, 3, 32, 32)
    # shorter side to 32 (area interpolation: 640x272 -> 75x32), then the centre 32 columns
    small = cv2.resize(frames[0], (75, 32), interpolation=cv2.INTER_AREA)[:, 21:53]
    assert torch.allclose(square[0, 0], torch.from_numpy(small).permute(2, 0, 1).float() / 127.5 - 1)
    wide = video_clips(videos / "bikes.mp4", num_frames=2, size=(17, 40), max_clips=1)
    assert wide.shape == (1, 2, 3, 17, 40)
    up = video_clips(videos / "carphone_pristine.mp4", num_frames=1, size=(288, 352), max_clips=1)
    big = cv2.resize(read_video_frames(videos / "carphone_pristine.mp4", 1)[0][0], (352, 288),
                     interpolation=cv2.INTER_LINEAR)
    assert torch.allclose(up[0, 0], torch.from_numpy(big).permute(2, 0, 1).float() / 127.5 - 1)


def test_video_clips_stride_and_frame_step(videos):
    path = videos / "carphone_pristine.mp4"
    overlapping = video_clips(path, num_frames=6, size=24, stride=3, max_clips=3)
    assert torch.equal(overlapping[1, :3], overlapping[0, 3:])
    assert torch.equal(overlapping[2, :3], overlapping[1, 3:])
    stepped = video_clips(path, num_frames=3, size=24, frame_step=2, max_clips=2)
    plain = video_clips(path, num_frames=12, size=24, max_clips=1)[0]
    assert torch.equal(stepped[0], plain[[0, 2, 4]]) and torch.equal(stepped[1], plain[[6, 8, 10]])
    every = video_clips(path, num_frames=16, size=16)
    assert every.shape[0] == 120 // 16                              # the short tail is dropped


def test_video_file_errors_name_the_file(videos, tmp_path):
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(VideoFileError, match="nowhere.mp4: no such file"):
        video_clips(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoFileError, match="garbage.mp4: not a readable video file"):
        video_clips(garbage)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((videos / "bikes.mp4").read_bytes()[:60000])
    with pytest.raises(VideoFileError, match="truncated.mp4"):
        video_clips(truncated)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoFileError, match="empty.mp4: empty file"):
        video_clips(empty)
    with pytest.raises(VideoFileError, match=r"carphone_pristine.mp4: 120 frames, fewer than one clip needs"):
        video_clips(videos / "carphone_pristine.mp4", num_frames=200, size=16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=0), "num_frames must be an int >= 1"),
    (dict(frame_step=0), "frame_step must be an int >= 1"),
    (dict(stride=0), "stride must be an int >= 1"),
    (dict(max_clips=0), "max_clips must be None or an int >= 1"),
    (dict(size=(16,)), "size must be None, an int or"),
    (dict(size=0), "size must be positive"),
])
def test_video_clips_bad_arguments(videos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        video_clips(videos / "carphone_pristine.mp4", **{"num_frames": 2, "max_clips": 1, **kwargs})
