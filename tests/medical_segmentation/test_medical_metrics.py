"""Region Dice and HD95 on hand-computable cases: shifted blocks on anisotropic grids, outliers that HD95 ignores
and the plain Hausdorff distance does not, the empty-region policy, the NaN-aware means and the CSV."""
import csv
import math

import numpy as np
import pytest

from mtp.pipelines.medical_segmentation.metrics import BRATS_REGIONS, BRATS_WORST_HD95, RegionMetrics, \
    grid_diagonal_mm, region_masks, region_scores

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")]  # MONAI's own call

ONE = {"A": [1]}


def block(shape, lo, hi, label=1):
    out = np.zeros(shape, dtype=np.uint8)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return out


@pytest.mark.parametrize("axis,spacing", [(0, (1.0, 1.0, 1.0)), (0, (2.0, 0.5, 3.0)), (1, (2.0, 0.5, 3.0)),
                                          (2, (2.0, 0.5, 3.0))])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_block_hd95_is_shift_times_spacing(axis, spacing, k):
    # A 2x2x2 block is all edge voxels; shifted by k along one axis, half its edge voxels are k - 1 voxels from
    # the reference's and half are k voxels away, so the 95th percentile is k voxels: k * spacing[axis] mm.
    shape = (12, 12, 12)
    lo = [4, 4, 4]
    ref = block(shape, lo, [v + 2 for v in lo])
    lo[axis] += k
    pred = block(shape, lo, [v + 2 for v in lo])
    scores = region_scores(pred, ref, ONE, spacing=spacing)
    assert scores["A_hd95"] == pytest.approx(k * spacing[axis], rel=1e-6)
    assert scores["A_dice"] == pytest.approx(1.0 if k == 0 else (0.5 if k == 1 else 0.0))
    assert scores["A_empty"] == ""


def test_diagonal_shift_uses_each_axis_spacing():
    ref = np.zeros((8, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[2, 2, 2] = 1
    pred[3, 4, 2] = 1  # one voxel off along x, two along y
    scores = region_scores(pred, ref, ONE, spacing=(1.5, 2.5, 4.0))
    assert scores["A_hd95"] == pytest.approx(math.hypot(1.5, 2 * 2.5), rel=1e-6)


def test_hd95_ignores_a_rare_outlier_that_the_maximum_sees():
    ref = np.zeros((60, 10, 10), np.uint8)
    ref[5:55, 5, 5] = 1  # a line of 50 voxels, all edges
    pred = ref.copy()
    pred[5, 5, 0] = 1  # one stray voxel 5 voxels (10 mm) from the line: 1 distance in 51
    scores = region_scores(pred, ref, ONE, spacing=(1.0, 1.0, 2.0))
    assert scores["A_hd95"] == 0.0
    import torch
    from monai.metrics import compute_hausdorff_distance  # the plain maximum does see it

    hd = compute_hausdorff_distance(torch.as_tensor(pred)[None, None], torch.as_tensor(ref)[None, None],
                                    include_background=True, spacing=(1.0, 1.0, 2.0))
    assert float(hd) == pytest.approx(10.0)


def test_regions_merge_labels():
    labels = np.array([[[0, 1, 2, 3, 4]]])
    masks = region_masks(labels, BRATS_REGIONS).numpy()
    np.testing.assert_array_equal(masks[:, 0, 0], [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]])
    # prediction: ET as necrosis (label 1) -> WT and TC perfect, ET missing
    ref = block((10, 10, 10), (2, 2, 2), (6, 6, 6), label=2)
    ref[3:5, 3:5, 3:5] = 4
    pred = ref.copy()
    pred[pred == 4] = 1
    scores = region_scores(pred, ref, BRATS_REGIONS)
    assert scores["WT_dice"] == 1.0 and scores["WT_hd95"] == 0.0
    assert scores["TC_dice"] == 1.0
    assert scores["ET_dice"] == 0.0 and scores["ET_empty"] == "prediction"


def test_empty_policy():
    shape, spacing = (20, 10, 5), (1.0, 2.0, 3.0)
    empty = np.zeros(shape, np.uint8)
    some = block(shape, (2, 2, 2), (4, 4, 4))
    both = region_scores(empty, empty, ONE, spacing=spacing)
    assert (both["A_dice"], both["A_hd95"], both["A_empty"]) == (1.0, 0.0, "both")
    diagonal = round(math.sqrt(20 ** 2 + 20 ** 2 + 15 ** 2), 2)
    missed = region_scores(empty, some, ONE, spacing=spacing)
    assert (missed["A_dice"], missed["A_hd95"], missed["A_empty"]) == (0.0, diagonal, "prediction")
    invented = region_scores(some, empty, ONE, spacing=spacing, empty_hd95="nan")
    assert invented["A_dice"] == 0.0 and math.isnan(invented["A_hd95"]) and invented["A_empty"] == "reference"
    assert region_scores(some, empty, ONE, spacing=spacing, empty_hd95=BRATS_WORST_HD95)["A_hd95"] == 373.13
    # the diagonal on BraTS's grid is BraTS's constant
    assert round(grid_diagonal_mm((240, 240, 155), (1, 1, 1)), 2) == BRATS_WORST_HD95
    with pytest.raises(ValueError, match="empty_hd95"):
        RegionMetrics(ONE, empty_hd95="worst")


def test_means_are_nan_aware_with_counts_and_csv(tmp_path):
    shape = (12, 12, 12)
    ref = block(shape, (4, 4, 4), (6, 6, 6))
    shifted = block(shape, (4, 4, 6), (6, 6, 8))
    empty = np.zeros(shape, np.uint8)
    metrics = RegionMetrics(ONE, empty_hd95="nan")
    metrics.update(ref, ref, spacing=(1, 1, 2), case="same")         # dice 1, hd95 0
    metrics.update(shifted, ref, spacing=(1, 1, 2), case="shifted")  # dice 0, hd95 2 voxels * 2 mm
    metrics.update(empty, ref, spacing=(1, 1, 2), case="missed")     # dice 0, hd95 missing
    summary = metrics.compute()
    assert summary == {"cases": 3, "A_dice": round(1 / 3, 4), "A_hd95": 2.0, "A_hd95_n": 2, "A_one_empty": 1}
    path = metrics.write_csv(tmp_path / "cases.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["same", "shifted", "missed", "mean"]
    assert rows[2]["A_hd95"] == "" and rows[2]["A_empty"] == "prediction"
    assert float(rows[1]["A_hd95"]) == 4.0 and rows[3]["A_empty"] == "one_empty=1"
    with pytest.raises(FileExistsError, match="cases.csv"):
        metrics.write_csv(path, overwrite=False)
    assert not [p for p in tmp_path.iterdir() if p.name != "cases.csv"]  # no temporary file left behind


def test_grids_must_match():
    with pytest.raises(ValueError, match="same grid"):
        region_scores(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), ONE)
    with pytest.raises(ValueError, match="non-integer"):
        region_scores(np.full((4, 4, 4), 0.5), np.zeros((4, 4, 4)), ONE)
