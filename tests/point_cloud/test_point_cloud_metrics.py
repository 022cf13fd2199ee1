import math

import numpy as np
import pytest
import torch

from mtp.pipelines.point_cloud.metrics import (ConfusionMatrix, InstanceSegmentationMeter, ShapeNetPartIoU,
                                               category_part_mask, classification_accuracy, instance_scores,
                                               restrict_to_category, shape_part_iou)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- classification
def test_classification_accuracy_by_hand():
    references = [0, 0, 0, 1, 1]
    predictions = [0, 0, 1, 1, 2]        # class 2 is predicted but never in the reference: left out of the mean
    scores = classification_accuracy(predictions, references, num_classes=3)
    assert scores["overall_accuracy"] == pytest.approx(3 / 5)
    assert scores["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores["samples"] == 5
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), 3).float()   # scores [S, C] -> argmax
    assert classification_accuracy(logits, torch.tensor(references))["mean_class_accuracy"] == pytest.approx(7 / 12)


# ---------------------------------------------------------------------------------------------- semantic
def test_confusion_matrix_accumulates_over_the_split_not_per_batch():
    matrix = ConfusionMatrix(2)
    matrix.update(np.zeros(8, dtype=int), np.zeros(8, dtype=int))          # batch A: mIoU 1 on its own
    matrix.update(torch.tensor([1, 1]), torch.tensor([0, 1]))              # batch B: mIoU (0 + 1/2) / 2 on its own
    per_batch_mean = (1.0 + 0.25) / 2
    assert matrix.matrix.tolist() == [[8, 1], [0, 1]]
    assert matrix.iou.tolist() == pytest.approx([8 / 9, 1 / 2])
    assert matrix.miou == pytest.approx((8 / 9 + 1 / 2) / 2)
    assert not math.isclose(matrix.miou, per_batch_mean)
    assert matrix.overall_accuracy == pytest.approx(9 / 10)
    assert matrix.mean_class_accuracy == pytest.approx((8 / 9 + 1) / 2)


def test_confusion_matrix_absent_classes_and_ignore_index():
    matrix = ConfusionMatrix(4, ignore_index=255)
    reference = np.array([[0, 0, 1, 255], [1, 1, 255, 255]])
    prediction = np.array([[0, 3, 1, 2], [1, 0, 7, 9]])       # ignored points: their predictions do not count
    matrix.update(prediction, reference)
    # class 0: TP 1, FN 1 (-> 3), FP 1 (ref 1 -> 0): 1/3; class 1: TP 2, FN 1: 2/3; class 2 absent from both;
    # class 3: predicted once, never in the reference: IoU 0, counted in the mean.
    iou = matrix.iou
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[3] == 0
    assert math.isnan(iou[2])
    assert matrix.miou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert matrix.total == 5 and matrix.overall_accuracy == pytest.approx(3 / 5)
    summary = matrix.summary(["a", "b", "c", "d"])
    assert summary["iou/b"] == pytest.approx(2 / 3) and summary["points"] == 5


def test_confusion_matrix_scores_input_and_bad_labels():
    matrix = ConfusionMatrix(3)
    logits = torch.tensor([[[0.1, 0.9, 0.0], [2.0, 0.0, 1.0]]])            # [B, N, C]
    matrix.update(logits, torch.tensor([[1, 2]]))
    assert matrix.matrix[1, 1] == 1 and matrix.matrix[2, 0] == 1
    with pytest.raises(ValueError, match="reference label 5 outside 0..2"):
        matrix.update([0], [5])
    with pytest.raises(ValueError, match="prediction label -1"):
        matrix.update([-1], [0])
    with pytest.raises(ValueError, match="does not match"):
        matrix.update([0, 1], [0])


# ---------------------------------------------------------------------------------------------- ShapeNetPart
def test_shape_part_iou_absent_part_scores_one():
    # Airplane (parts 0-3): part 0: 1/2, part 1: 2/3, parts 2 and 3 absent from both: 1 each.
    assert shape_part_iou([0, 1, 1, 1], [0, 0, 1, 1], "Airplane") == pytest.approx((0.5 + 2 / 3 + 1 + 1) / 4)
    # A part of another category (8, Car) is a miss for the reference part and in no other union.
    assert shape_part_iou([8, 8, 1, 1], [0, 0, 1, 1], 0) == pytest.approx((0 + 1 + 1 + 1) / 4)


def test_shapenetpart_instance_and_class_miou():
    meter = ShapeNetPartIoU()
    meter.update([0, 1, 1, 1], [0, 0, 1, 1], 0)                  # Airplane: 19/24
    meter.update(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]), "Airplane")   # 1
    meter.update([4, 4, 4, 4], [4, 4, 5, 5], "Bag")              # part 4: 1/2, part 5: 0 -> 1/4
    assert meter.instance_miou == pytest.approx((19 / 24 + 1 + 0.25) / 3)
    assert meter.category_miou == pytest.approx({"Airplane": (19 / 24 + 1) / 2, "Bag": 0.25})
    assert meter.class_miou == pytest.approx(((19 / 24 + 1) / 2 + 0.25) / 2)
    assert meter.summary()["shapes"] == 3


def test_shapenetpart_batched_with_padding():
    meter = ShapeNetPartIoU()
    reference = torch.tensor([[0, 0, 1, 1], [4, 5, -1, -1]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 1], [4, 5, 0, 0]]), 50).float()
    meter.update(logits, reference, torch.tensor([0, 1]), lengths=torch.tensor([4, 2]))
    assert [iou for _, iou in meter.shapes] == pytest.approx([19 / 24, 1.0])


def test_restrict_to_category_masks_other_parts():
    logits = torch.zeros(2, 3, 50)
    logits[:, :, 30] = 5.0                                       # a Motorbike part wins everywhere unmasked
    logits[0, :, 2] = 1.0
    restricted = restrict_to_category(logits, torch.tensor([0, 1]))   # Airplane, Bag
    labels = restricted.argmax(-1)
    assert (labels[0] == 2).all() and set(labels[1].tolist()) <= {4, 5}
    assert torch.isinf(restricted[0, 0, 30]) and restricted[0, 0, 2] == 1.0
    single = restrict_to_category(logits[0], "Airplane")
    assert (single.argmax(-1) == 2).all()
    assert category_part_mask("Table").nonzero().flatten().tolist() == [47, 48, 49]
    assert int(category_part_mask(torch.arange(16)).sum()) == 50


# ---------------------------------------------------------------------------------------------- instances
def _scene_split():
    # Reference A = points 0-3, B = points 4-7, points 8-9 invalid (id 0, ignored). A is split in two segments.
    reference = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0])
    prediction = np.array([10, 10, 11, 11, 12, 12, 12, 12, 12, 12])
    return prediction, reference


def _scene_merged():
    # One segment covers both reference instances (2 and 4 points).
    return np.array([9, 9, 9, 9, 9, 9]), np.array([1, 1, 2, 2, 2, 2])


def test_instance_scores_over_segmentation_by_hand():
    prediction, reference = _scene_split()
    s = instance_scores(prediction, reference, ignore_reference=[0])
    # IoU: A-10 = 2/4, A-11 = 2/4, B-12 = 4/4 (the ignored points of segment 12 are dropped).
    assert s["iou"] == pytest.approx(np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))
    assert s["matched_iou"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["true_positives"] == 1                               # 0.5 is not > 0.5
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)
    assert s["over_segmented"] == 1 and s["over_segmentation_rate"] == pytest.approx(1 / 2)
    assert s["under_segmented"] == 0 and s["under_segmentation_rate"] == 0
    assert (2, 12, 1.0) in s["matches"]


def test_instance_scores_under_segmentation_by_hand():
    prediction, reference = _scene_merged()
    s = instance_scores(prediction, reference)
    assert s["iou"].ravel().tolist() == pytest.approx([2 / 6, 4 / 6])
    assert s["matches"] == [(2, 9, pytest.approx(4 / 6))]
    assert s["true_positives"] == 1 and s["precision"] == 1 and s["recall"] == pytest.approx(1 / 2)
    assert s["matched_iou"] == pytest.approx((0 + 4 / 6) / 2)
    assert s["under_segmented"] == 1 and s["under_segmentation_rate"] == 1
    assert s["over_segmented"] == 0


def test_instance_meter_pools_counts_over_scenes():
    meter = InstanceSegmentationMeter(ignore_reference=[0])
    first = meter.update(*_scene_split())
    second = meter.update(*_scene_merged())
    summary = meter.summary()
    assert summary["reference"] == 4 and summary["predicted"] == 4 and summary["true_positives"] == 2
    assert summary["precision"] == pytest.approx(2 / 4)
    assert summary["precision"] != pytest.approx((first["precision"] + second["precision"]) / 2)
    assert summary["recall"] == pytest.approx(2 / 4)
    assert summary["matched_iou"] == pytest.approx((0.5 + 1.0 + 0 + 4 / 6) / 4)
    assert summary["over_segmentation_rate"] == pytest.approx(1 / 4)
    assert summary["under_segmentation_rate"] == pytest.approx(1 / 4)
    assert summary["scenes"] == 2


def test_instance_scores_valid_mask_and_unassigned_points():
    reference = torch.tensor([1, 1, 1, 1, 2, 2])
    prediction = torch.tensor([5, 5, 5, -1, 6, 6])               # point 3 is in no segment
    valid = torch.tensor([True, True, True, True, True, False])
    s = instance_scores(prediction, reference, valid=valid)
    # A: 3/4 with segment 5; B (1 valid point) with segment 6 (1 point): 1.
    assert s["iou"] == pytest.approx(np.array([[0.75, 0.0], [0.0, 1.0]]))
    assert s["true_positives"] == 2 and s["precision"] == 1 and s["recall"] == 1
    assert s["matched_iou"] == pytest.approx((0.75 + 1) / 2)
    empty = instance_scores(np.full(3, -1), np.array([1, 1, 2]))
    assert empty["predicted"] == 0 and math.isnan(empty["precision"]) and empty["recall"] == 0
