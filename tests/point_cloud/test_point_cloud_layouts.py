import json

import numpy as np
import pytest
import torch

from mtp.datasets.point_cloud import PointCloud, write_pcd
from mtp.datasets.point_cloud.layouts import (MOSD, MOSD_INVALID_LABEL, S3DIS, S3DIS_CLASSES,
                                              SHAPENETPART_CATEGORIES, SHAPENETPART_SEG_CLASSES, ModelNet,
                                              PointCloudLayoutError, ShapeNetPart, collate_points,
                                              mosd_merge_parts, mosd_semantic, read_table)

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_rows(path, rows, sep):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(sep.join(f"{v:g}" for v in row) + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------- ModelNet
def _modelnet(tmp_path, prefix="modelnet40", classes=("airplane", "night_stand", "chair"),
              train=("airplane_0001", "night_stand_0001"), test=("chair_0001",)):
    root = tmp_path / "modelnet40_normal_resampled"
    root.mkdir(exist_ok=True)
    (root / f"{prefix}_shape_names.txt").write_text("\n".join(classes) + "\n")
    (root / f"{prefix}_train.txt").write_text("\n".join(train) + "\n")
    (root / f"{prefix}_test.txt").write_text("\n".join(test) + "\n")
    for k, shape_id in enumerate(train + test):
        rows = [[k + i, 2.0 * i, -i, 0, 0, 1] for i in range(5)]
        _write_rows(root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt", rows, ",")
    return root


def test_modelnet_reads_first_points_labels_and_normals(tmp_path):
    root = _modelnet(tmp_path)
    data = ModelNet(root, "train", num_points=3, normalize=False)
    assert len(data) == 2
    item = data[1]
    assert item["id"] == "night_stand_0001" and item["label"] == 1
    assert item["points"].dtype == torch.float32
    assert item["points"].tolist() == [[1, 0, 0], [2, 2, -1], [3, 4, -2]]      # the first 3 rows
    assert item["features"].tolist() == [[0, 0, 1]] * 3
    test = ModelNet(root, "test", num_points=None, normals=False)
    item = test[0]
    assert item["label"] == 2 and item["features"].shape == (5, 0)
    radius = item["points"].norm(dim=1)
    assert item["points"].mean(0).abs().max() < 1e-6 and radius.max() == pytest.approx(1.0)
    with pytest.raises(PointCloudLayoutError, match="5 points, fewer than num_points=6"):
        ModelNet(root, "test", num_points=6)[0]


def test_modelnet10_files_of_the_same_folder(tmp_path):
    _modelnet(tmp_path)
    root = _modelnet(tmp_path, "modelnet10", classes=("chair", "desk"), train=("desk_0003",), test=("chair_0001",))
    data = ModelNet(root, "train", num_classes=10, num_points=2)
    assert data.classes == ["chair", "desk"] and data[0]["label"] == 1 and data[0]["points"].shape == (2, 3)


def test_modelnet_root_under_mtp_data_dir(tmp_path, monkeypatch):
    _modelnet(tmp_path)
    monkeypatch.setenv("MTP_DATA_DIR", str(tmp_path))
    assert len(ModelNet(None, "test")) == 1
    assert len(ModelNet("modelnet40_normal_resampled", "train")) == 2


def test_modelnet_bad_layouts_name_the_file(tmp_path):
    root = _modelnet(tmp_path)
    (root / "modelnet40_train.txt").write_text("airplane_0001\nairplane_0002\n")
    with pytest.raises(FileNotFoundError, match=r"modelnet40_train.txt: line 2: airplane_0002 has no point file"):
        ModelNet(root, "train")
    (root / "modelnet40_train.txt").write_text("airplane_0001\nsofa_0001\n")
    with pytest.raises(PointCloudLayoutError, match=r"modelnet40_train.txt: line 2: unknown class 'sofa'"):
        ModelNet(root, "train")
    (root / "modelnet40_train.txt").write_text("\n\n")
    with pytest.raises(PointCloudLayoutError, match="modelnet40_train.txt: empty"):
        ModelNet(root, "train")
    shape = root / "chair" / "chair_0001.txt"
    shape.write_text("0,0,0,0,0,1\n1,1,1,0,0,1\n2,2,2,0,1\n")
    with pytest.raises(PointCloudLayoutError, match=r"chair_0001.txt: line 3 has 5 columns, expected 6"):
        ModelNet(root, "test", num_points=3)[0]
    shape.write_text("0,0,0,0,0,1\n1,x,1,0,0,1\n")
    with pytest.raises(PointCloudLayoutError, match=r"chair_0001.txt: line 2: 'x' is not a number"):
        ModelNet(root, "test", num_points=None)[0]
    with pytest.raises(FileNotFoundError, match="modelnet10_shape_names.txt"):
        ModelNet(root, "train", num_classes=10)


# ---------------------------------------------------------------------------------------------- ShapeNetPart
AIRPLANE, BAG = "02691156", "02773838"


def _shapenetpart(tmp_path):
    root = tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    (root / "train_test_split").mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text(f"Airplane\t{AIRPLANE}\nBag\t{BAG}\n")
    lists = {"train": [f"shape_data/{AIRPLANE}/a1", f"shape_data/{BAG}/b1"], "val": [f"shape_data/{AIRPLANE}/a2"],
             "test": [f"shape_data/{BAG}/b2"]}
    for split, entries in lists.items():
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    parts = {AIRPLANE: [0, 1, 3, 3, 2], BAG: [4, 5, 5, 4, 4]}
    for entries in lists.values():
        for entry in entries:
            _, synset, token = entry.split("/")
            rows = [[i, i, i, 1, 0, 0, part] for i, part in enumerate(parts[synset])]
            _write_rows(root / synset / f"{token}.txt", rows, " ")
    return root


def test_shapenetpart_items_and_categories(tmp_path):
    root = _shapenetpart(tmp_path)
    assert len(SHAPENETPART_SEG_CLASSES) == 16
    assert sorted(p for parts in SHAPENETPART_SEG_CLASSES.values() for p in parts) == list(range(50))
    data = ShapeNetPart(root, "train")
    assert [item[0] for item in data.items] == [f"{AIRPLANE}/a1", f"{BAG}/b1"]
    item = data[1]
    assert item["category"] == SHAPENETPART_CATEGORIES.index("Bag") == 1
    assert item["labels"].dtype == torch.long and item["labels"].tolist() == [4, 5, 5, 4, 4]
    assert item["features"].shape == (5, 3) and item["points"].shape == (5, 3)
    assert len(ShapeNetPart(root, "trainval")) == 3
    assert len(ShapeNetPart(root, "trainval", categories=["Airplane"])) == 2
    sampled = ShapeNetPart(root, "val", num_points=8, normals=False, seed=3)
    first, again = sampled[0], sampled[0]
    assert first["points"].shape == (8, 3) and first["features"].shape == (8, 0)
    assert torch.equal(first["points"], again["points"]) and torch.equal(first["labels"], again["labels"])
    assert set(first["labels"].tolist()) <= {0, 1, 2, 3}


def test_shapenetpart_bad_layouts_name_the_file(tmp_path):
    root = _shapenetpart(tmp_path)
    test_list = root / "train_test_split" / "shuffled_test_file_list.json"
    test_list.write_text(json.dumps([f"shape_data/{BAG}/b2", f"shape_data/{BAG}/missing"]))
    with pytest.raises(FileNotFoundError, match=r"shuffled_test_file_list.json: entry 1: .*has no point file"):
        ShapeNetPart(root, "test")
    test_list.write_text(json.dumps(["shape_data/04379243/t1"]))
    with pytest.raises(PointCloudLayoutError, match="unknown synset 04379243"):
        ShapeNetPart(root, "test")
    (root / BAG / "b1.txt").write_text("0 0 0 1 0 0 4\n0 0 0 1 0 0 9\n")
    with pytest.raises(PointCloudLayoutError, match=r"b1.txt: row 2: part 9 is not a part of Bag"):
        ShapeNetPart(root, "train")[1]
    (root / BAG / "b1.txt").write_text("0 0 0 1 0 0 4\n0 0 0 1 0 4\n")
    with pytest.raises(PointCloudLayoutError, match=r"b1.txt: line 2 has 6 columns, expected 7"):
        ShapeNetPart(root, "train")[1]
    (root / "synsetoffset2category.txt").write_text(f"Airplane\t{AIRPLANE}\nBags\t{BAG}\n")
    with pytest.raises(PointCloudLayoutError, match=r"synsetoffset2category.txt: line 2: unknown category 'Bags'"):
        ShapeNetPart(root, "train")


# ---------------------------------------------------------------------------------------------- S3DIS
def _s3dis(tmp_path):
    root = tmp_path / "Stanford3dDataset_v1.2_Aligned_Version"
    rooms = {1: {"office_1": ["ceiling_1", "chair_1", "chair_2", "stairs_1"], "hallway_1": ["floor_1"]},
             **{area: {"office_1": ["wall_1", "clutter_1"]} for area in (2, 3, 4, 5, 6)}}
    for area, area_rooms in rooms.items():
        for room, annotations in area_rooms.items():
            for k, name in enumerate(annotations):
                rows = [[area, k, 0.1 * i, 255, 0, 51 * k] for i in range(k + 1)]
                _write_rows(root / f"Area_{area}" / room / "Annotations" / f"{name}.txt", rows, " ")
    return root


def test_s3dis_rooms_labels_instances_and_split(tmp_path):
    root = _s3dis(tmp_path)
    train = S3DIS(root, "train")
    assert [room for room, _ in train.rooms] == ["Area_1/hallway_1", "Area_1/office_1", "Area_2/office_1",
                                                 "Area_3/office_1", "Area_4/office_1", "Area_6/office_1"]
    test = S3DIS(root, "test")
    assert [room for room, _ in test.rooms] == ["Area_5/office_1"]
    item = train[1]
    assert item["id"] == "Area_1/office_1"
    c = S3DIS_CLASSES.index
    # ceiling_1 (1 point), chair_1 (2), chair_2 (3), stairs_1 (4) -> clutter
    assert item["labels"].tolist() == [c("ceiling")] + [c("chair")] * 5 + [c("clutter")] * 4
    assert item["instance"].tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert item["points"].shape == (10, 3) and item["features"].shape == (10, 3)
    assert item["features"][0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert item["features"][-1].tolist() == pytest.approx([1.0, 0.0, 0.6])
    assert len(S3DIS(root, areas=[1, 2])) == 3
    assert len(S3DIS(root, "train", test_area=1)) == 5
    sampled = S3DIS(root, areas=[1], grid_size=1.0)[1]             # all points of an annotation share a voxel
    assert sampled["points"].shape[0] < 10 and len(sampled["labels"]) == sampled["points"].shape[0]


def test_s3dis_bad_layouts_name_the_file(tmp_path):
    root = _s3dis(tmp_path)
    piano = root / "Area_2" / "office_1" / "Annotations" / "piano_1.txt"
    piano.write_text("0 0 0 1 1 1\n")
    with pytest.raises(PointCloudLayoutError, match=r"piano_1.txt: unknown class 'piano'"):
        S3DIS(root, "train")
    piano.unlink()
    empty = root / "Area_3" / "office_2" / "Annotations"
    empty.mkdir(parents=True)
    with pytest.raises(PointCloudLayoutError, match=r"Area_3/office_2/Annotations: empty Annotations folder"):
        S3DIS(root, "train")
    empty.rmdir()
    ragged = root / "Area_5" / "office_1" / "Annotations" / "wall_1.txt"
    ragged.write_text("0 0 0 1 1 1\n0 0 0 1 1\n")
    with pytest.raises(PointCloudLayoutError, match=r"wall_1.txt: line 2 has 5 columns, expected 6"):
        S3DIS(root, "test")[0]
    with pytest.raises(FileNotFoundError, match="Area_7"):
        S3DIS(root, areas=[7])


# ---------------------------------------------------------------------------------------------- mOSD
@pytest.fixture(scope="module")
def mosd_root(data_dir):
    path = data_dir / "pointcloud" / "mOSD"
    if not (path / "test").is_dir():
        pytest.skip(f"shared test data missing: {path}")
    return path


def test_mosd_test_scene(mosd_root):
    data = MOSD(mosd_root, "test")
    assert len(data) == 11 and data.files[0].stem == "test0" and data.files[1].stem == "test8"
    item = data[0]
    assert item["id"] == "test0" and (item["width"], item["height"]) == (640, 480)
    n = 640 * 480
    assert item["points"].shape == (n, 3) and item["features"].shape == (n, 3)
    valid = item["valid"]
    assert int(valid.sum()) == 189198
    assert torch.isnan(item["points"][~valid]).any(dim=1).all()
    assert (item["labels"][~valid] == MOSD_INVALID_LABEL).all() and (item["instance"][~valid] == 0).all()
    assert sorted(item["instance"].unique().tolist()) == [0, 1, 20, 30]
    assert int((item["labels"] == 0).sum()) == int((item["instance"] == 1).sum())          # table
    assert int((item["labels"] == 1).sum()) == int((item["instance"] >= 20).sum())         # objects
    assert float(item["features"].max()) <= 1.0


def test_mosd_merged_parts_and_default_root(mosd_root, data_dir, monkeypatch):
    monkeypatch.setenv("MTP_DATA_DIR", str(data_dir))
    data = MOSD(split="test", merge_parts=True)
    index = [p.stem for p in data.files].index("test55")            # table parts 1-7, an object in parts
    item = data[index]
    assert sorted(item["instance"].unique().tolist()) == list(range(0, 16))
    assert sorted(item["labels"].unique().tolist()) == [-1, 0, 1]
    assert len(MOSD(split="train")) == 20


def test_mosd_label_mappings():
    raw = np.array([0, 1, 7, 20, 21, 30, 151])
    assert mosd_semantic(raw).tolist() == [-1, 0, 0, 1, 1, 1, 1]
    assert mosd_merge_parts(raw).tolist() == [0, 1, 1, 2, 2, 3, 15]


def test_mosd_bad_layouts_name_the_file(tmp_path):
    root = tmp_path / "mOSD"
    (root / "test").mkdir(parents=True)
    with pytest.raises(PointCloudLayoutError, match=r"mOSD/test: empty folder"):
        MOSD(root, "test")
    cloud = PointCloud(np.zeros((4, 3), np.float32), {"intensity": np.ones(4, np.float32)})
    write_pcd(root / "test" / "test0.pcd", cloud)
    with pytest.raises(PointCloudLayoutError, match=r"test0.pcd: no 'label' field"):
        MOSD(root, "test")
    labelled = PointCloud(np.zeros((3, 3), np.float32), {"label": np.array([1, 15, 20], np.uint32)})
    write_pcd(root / "test" / "test0.pcd", labelled, overwrite=True)
    with pytest.raises(PointCloudLayoutError, match=r"test0.pcd: label 15 at point 1"):
        MOSD(root, "test")[0]
    with pytest.raises(FileNotFoundError, match="learn"):
        MOSD(root, "train")


# ---------------------------------------------------------------------------------------------- shared
def test_collate_points_pads_variable_sizes(tmp_path):
    data = S3DIS(_s3dis(tmp_path), areas=[1])
    batch = collate_points([data[0], data[1]])
    assert batch["lengths"].tolist() == [1, 10]
    assert batch["points"].shape == (2, 10, 3) and torch.isnan(batch["points"][0, 1:]).all()
    assert (batch["labels"][0, 1:] == -1).all() and batch["ids"] == ["Area_1/hallway_1", "Area_1/office_1"]


def test_read_table_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(PointCloudLayoutError, match="empty.txt: empty file"):
        read_table(path, 6)
    path.write_text("\n \n")
    with pytest.raises(PointCloudLayoutError, match="empty.txt: no data rows"):
        read_table(path, 6)
