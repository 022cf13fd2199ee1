"""ModelNet40's HDF5 release (modelnet40_ply_hdf5_2048), on small files written in that layout."""
import numpy as np
import pytest

from mtp.datasets.point_cloud.layouts import ModelNetH5, PointCloudLayoutError

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("airplane", "bathtub", "bed")


def _h5(path, data, label, normal=None):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
        if normal is not None:
            f.create_dataset("normal", data=normal)


def _release(tmp_path, points=16):
    """Two train files and one test file, listed by paths relative to PointNet's repository as released."""
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    root.mkdir()
    (root / "shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(0)
    clouds = {}
    for name, labels in (("ply_data_train0", [0, 2, 1]), ("ply_data_train1", [2]), ("ply_data_test0", [1, 0])):
        data = rng.normal(size=(len(labels), points, 3)).astype(np.float32)
        normal = rng.normal(size=(len(labels), points, 3)).astype(np.float32)
        _h5(root / f"{name}.h5", data, np.array(labels, dtype=np.uint8)[:, None], normal)
        clouds[name] = (data, labels, normal)
    (root / "train_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\n"
                                          "data/modelnet40_ply_hdf5_2048/ply_data_train1.h5\n")
    (root / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n")
    return root, clouds


def test_reads_the_first_points_labels_and_normals_in_file_order(tmp_path):
    root, clouds = _release(tmp_path)
    train = ModelNetH5(root, "train", num_points=8, normals=True)
    assert len(train) == 4 and train.classes == list(CLASSES)
    assert [train[i]["label"] for i in range(4)] == [0, 2, 1, 2]
    item = train[3]
    data, _, normal = clouds["ply_data_train1"]
    np.testing.assert_array_equal(item["points"].numpy(), data[0, :8])
    np.testing.assert_array_equal(item["features"].numpy(), normal[0, :8])
    assert item["id"] == "ply_data_train1/0"
    test = ModelNetH5(root, "test", num_points=None)
    assert len(test) == 2 and test[0]["points"].shape == (16, 3) and test[0]["features"].shape == (16, 0)


def test_normalize_puts_the_kept_points_in_the_unit_sphere(tmp_path):
    root, _ = _release(tmp_path)
    points = ModelNetH5(root, "test", num_points=8, normalize=True)[1]["points"].numpy()
    np.testing.assert_allclose(points.mean(axis=0), 0, atol=1e-6)
    assert np.linalg.norm(points, axis=1).max() == pytest.approx(1.0, abs=1e-6)


def test_registered_builder_has_no_validation_split(tmp_path):
    from mtp.datasets.point_cloud.layouts import modelnet_h5
    root, _ = _release(tmp_path)
    assert modelnet_h5(root, "val") is None
    assert len(modelnet_h5(root, "train", num_points=4)) == 4


def test_bad_release_files_name_the_file(tmp_path):
    root, _ = _release(tmp_path)
    with pytest.raises(ValueError, match="num_points"):
        ModelNetH5(root, "train", num_points=4096)
    with pytest.raises(PointCloudLayoutError, match="fewer than num_points=32"):
        ModelNetH5(root, "train", num_points=32)
    (root / "ply_data_train1.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(PointCloudLayoutError, match="ply_data_train1.h5: not a readable HDF5"):
        ModelNetH5(root, "train", num_points=4)
    (root / "ply_data_train1.h5").unlink()
    with pytest.raises(FileNotFoundError, match="train_files.txt: line 2"):
        ModelNetH5(root, "train", num_points=4)
    _h5(root / "ply_data_train1.h5", np.zeros((1, 16, 3), np.float32), np.array([[7]], np.uint8))
    with pytest.raises(PointCloudLayoutError, match="label 7 .* not a class"):
        ModelNetH5(root, "train", num_points=4)
    _h5(root / "ply_data_train1.h5", np.zeros((1, 16, 2), np.float32), np.array([[0]], np.uint8))
    with pytest.raises(PointCloudLayoutError, match=r"'data' has shape \(1, 16, 2\)"):
        ModelNetH5(root, "train", num_points=4)
    with h5py.File(root / "ply_data_train1.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((1, 16, 3), np.float32))
    with pytest.raises(PointCloudLayoutError, match="no 'label' array"):
        ModelNetH5(root, "train", num_points=4)
    _h5(root / "ply_data_train1.h5", np.zeros((1, 16, 3), np.float32), np.array([[0]], np.uint8))
    with pytest.raises(PointCloudLayoutError, match="ply_data_train1.h5: no 'normal' array"):
        ModelNetH5(root, "train", num_points=4, normals=True)
