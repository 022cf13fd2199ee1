"""The pieces of benchmarks/medical_bench.py that decide what it measures, without running it: the fixture's weight
rule, the window count, the volume recipe and MONAI's einops shim."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    path = REPO / "benchmarks" / "medical_bench.py"
    before = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("medical_bench_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)   # it puts benchmarks/ on sys.path for child_run
    finally:
        sys.path[:] = before
    return module


def test_parse_shape(bench):
    assert bench.parse_shape("240x240x155") == (240, 240, 155)
    assert bench.parse_shape("128") == (128, 128, 128)
    with pytest.raises(ValueError):
        bench.parse_shape("64x64")


def test_window_count_matches_monai(bench):
    # the fixture README's counts for 240x240x155 with roi 128^3: 18 windows at overlap 0.5, 32 at 0.6 and 0.7
    assert bench.window_count((240, 240, 155), (128,) * 3, 0.5) == 18
    assert bench.window_count((240, 240, 155), (128,) * 3, 0.6) == 32
    assert bench.window_count((240, 240, 155), (128,) * 3, 0.7) == 32
    from monai.inferers.utils import _get_scan_interval, dense_patch_slices
    for shape, roi, overlap in (((64, 64, 48), (32, 32, 64), 0.5), ((480, 480, 310), (128,) * 3, 0.5)):
        padded = tuple(max(s, r) for s, r in zip(shape, roi))
        interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
        assert bench.window_count(shape, roi, overlap) == len(dense_patch_slices(padded, roi, interval))


def test_fixture_init_reproduces_the_fixture_weights(bench, fixtures_dir):
    """The sidecar's rule, applied to our tiny model, gives the fixture's state dict bit for bit."""
    from safetensors.torch import load_file

    from mtp.backbones.swinunetr import SwinUNETR

    folder = fixtures_dir / "swinunetr"
    side = json.loads((folder / "swinunetr_tiny.json").read_text())
    kw = side["constructor_kwargs"]
    torch.manual_seed(0)
    model = SwinUNETR(in_channels=kw["in_channels"], out_channels=kw["out_channels"],
                      feature_size=kw["feature_size"], patch_merging="merging")
    bench.fixture_init_(model, 42)
    reference = load_file(folder / "swinunetr_tiny_state_dict.safetensors")
    state = model.state_dict()
    assert set(state) == set(reference)
    for key, value in state.items():
        assert torch.equal(value, reference[key]), key
    assert bench.fixture_atol()["output"] == side["suggested_atol_by_tensor"]["output"]


def test_monai_shim_matches_a_permute(bench):
    x = torch.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    y = bench._rearrange(x, "b c d h w -> b d h w c")
    assert y.shape == (2, 4, 5, 6, 3) and torch.equal(bench._rearrange(y, "b d h w c -> b c d h w"), x)


def test_brain_volume(bench, data_dir):
    case = data_dir / "medical" / "brats2015_deepmedic" / "test" / "brats_2013_pat0001_1"
    if not case.is_dir():
        pytest.skip(f"missing {case}")
    volume, origin = bench.brain_volume(case, (64, 64, 48))
    assert volume.shape == (4, 64, 64, 48) and volume.dtype.name == "float32"
    assert (volume[0] == volume[3]).all() and (volume[1] == volume[2]).all()   # [FLAIR, T1c, T1c, FLAIR]
    assert all(0 <= o for o in origin)
    padded, origin = bench.brain_volume(case, (256, 240, 160))                # larger: zero-padded, centred
    assert padded.shape == (4, 256, 240, 160) and origin[0] == -8 and origin[2] <= 0
    assert (padded[:, :8] == 0).all()
    inside = padded[0][padded[0] != 0]
    assert abs(float(inside.mean())) < 0.05 and abs(float(inside.std()) - 1) < 0.05
