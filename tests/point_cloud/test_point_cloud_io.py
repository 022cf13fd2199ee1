import struct

import numpy as np
import pytest

from mtp.datasets.point_cloud.io import (PointCloud, PointCloudFileError, lzf_compress, lzf_decompress, read_pcd,
                                         read_points, write_pcd, write_points)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mosd_file(data_dir):
    path = data_dir / "pointcloud" / "mOSD" / "test" / "test0.pcd"
    if not path.exists():
        pytest.skip(f"shared test data missing: {path}")
    return path


def _cloud(organised: bool = True) -> PointCloud:
    """4 x 5 organised cloud with colours, uint32 labels, intensity, a COUNT-3 field, and NaN points."""
    rng = np.random.default_rng(0)
    n = 20
    points = rng.normal(size=(n, 3)).astype(np.float32)
    points[[3, 11]] = np.nan
    points[7, 2] = np.nan
    fields = {
        "colors": rng.integers(0, 256, size=(n, 3)).astype(np.uint8),
        "label": rng.integers(0, 2**32, size=n, dtype=np.uint32),
        "intensity": rng.random(n).astype(np.float32),
        "normal": rng.normal(size=(n, 3)).astype(np.float32),
        "ring": rng.integers(-300, 300, size=n).astype(np.int16),
        "time": rng.random(n) * 1e9,                      # float64
    }
    fields["label"][0] = 2**32 - 1
    if organised:
        return PointCloud(points, fields, width=5, height=4, viewpoint=(1, 2, 3, 0.5, 0.5, 0.5, 0.5))
    return PointCloud(points, fields)


def _assert_same(a: PointCloud, b: PointCloud) -> None:
    np.testing.assert_array_equal(a.points, b.points)   # NaN == NaN here
    assert list(a.fields) == list(b.fields)
    for name in a.fields:
        assert a.fields[name].dtype == b.fields[name].dtype, name
        np.testing.assert_array_equal(a.fields[name], b.fields[name], err_msg=name)
    assert (a.width, a.height, a.viewpoint) == (b.width, b.height, b.viewpoint)


# ------------------------------------------------------------------------------------------------ real data
def test_mosd_matches_open3d(mosd_file):
    o3d = pytest.importorskip("open3d")
    cloud = read_pcd(mosd_file)
    assert cloud.source == mosd_file
    assert (cloud.width, cloud.height) == (640, 480) and cloud.organized
    assert cloud.points.dtype == np.float32 and cloud.points.shape == (640 * 480, 3)
    reference = o3d.io.read_point_cloud(str(mosd_file), remove_nan_points=False, remove_infinite_points=False)
    np.testing.assert_array_equal(cloud.points, np.asarray(reference.points).astype(np.float32))
    np.testing.assert_array_equal(cloud.fields["colors"], np.round(np.asarray(reference.colors) * 255))
    assert 0 < (~cloud.valid).sum() < len(cloud)
    # README: label 0 = the NaN points, 1-9 the table, 20+ object parts (tens digit = object).
    label = cloud.fields["label"]
    assert label.dtype == np.uint32
    np.testing.assert_array_equal(label == 0, ~cloud.valid)
    parts = np.unique(label[cloud.valid])
    assert parts.min() >= 1 and not ((parts >= 10) & (parts < 20)).any() and (parts >= 20).any()
    assert cloud.viewpoint == (0, 0, 0, 1, 0, 0, 0)
    # Organised row-major: pixel neighbours (left/right, up/down) are millimetres apart, far closer than a
    # pixel and the one 50 rows below it.
    grid = cloud.points.reshape(480, 640, 3)
    right = np.nanmedian(np.linalg.norm(grid[:, 1:] - grid[:, :-1], axis=-1))
    down = np.nanmedian(np.linalg.norm(grid[1:] - grid[:-1], axis=-1))
    far = np.nanmedian(np.linalg.norm(grid[50:] - grid[:-50], axis=-1))
    assert right < 0.01 and down < 0.01 and far > 10 * max(right, down)


def test_mosd_rewrite_is_lossless(mosd_file, tmp_path):
    cloud = read_pcd(mosd_file)
    out = write_points(tmp_path / "copy.pcd", cloud, data="binary_compressed")
    _assert_same(read_points(out), cloud)


# ------------------------------------------------------------------------------------------------ PCD
@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_pcd_round_trip(tmp_path, data):
    cloud = _cloud()
    path = write_pcd(tmp_path / f"c_{data}.pcd", cloud, data=data)
    assert f"DATA {data}\n".encode() in path.read_bytes()[:600]
    again = read_pcd(path)
    _assert_same(again, cloud)
    np.testing.assert_array_equal(again.valid, cloud.valid)
    assert again.valid.sum() == 17


@pytest.mark.parametrize("data", ["ascii", "binary", "binary_compressed"])
def test_open3d_reads_our_pcd(tmp_path, data):
    o3d = pytest.importorskip("open3d")
    cloud = _cloud(organised=False)
    path = write_pcd(tmp_path / "c.pcd", cloud, data=data)
    reference = o3d.io.read_point_cloud(str(path), remove_nan_points=False, remove_infinite_points=False)
    np.testing.assert_array_equal(np.asarray(reference.points).astype(np.float32), cloud.points)
    np.testing.assert_array_equal(np.round(np.asarray(reference.colors) * 255), cloud.fields["colors"])


def test_reads_open3d_compressed_pcd(tmp_path):
    o3d = pytest.importorskip("open3d")
    # A regular grid with repeated coordinates and few colours: liblzf finds many back-references in it.
    i, j = np.meshgrid(np.arange(60), np.arange(50), indexing="ij")
    xyz = np.stack([i * 0.25, j * 0.5, np.sin(i / 7.0) * (j % 3)], axis=-1).reshape(-1, 3)
    rgb = np.stack([(i % 4) * 60, (j % 5) * 50, np.full_like(i, 200)], axis=-1).reshape(-1, 3) / 255.0
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    pcd.colors = o3d.utility.Vector3dVector(rgb)
    path = tmp_path / "o3d.pcd"
    assert o3d.io.write_point_cloud(str(path), pcd, compressed=True)
    raw = path.read_bytes()
    body = raw[raw.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n"):]
    compressed, uncompressed = struct.unpack("<II", body[:8])
    assert compressed < uncompressed / 2          # back-references, not just literals
    cloud = read_points(path)
    reference = o3d.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(cloud.points, np.asarray(reference.points).astype(np.float32))
    np.testing.assert_array_equal(cloud.points, xyz.astype(np.float32))
    np.testing.assert_array_equal(cloud.fields["colors"], np.round(np.asarray(reference.colors) * 255))
    assert list(cloud.fields) == ["colors"] and (cloud.width, cloud.height) == (3000, 1)


def test_pcd_ascii_float_rgb_and_count(tmp_path):
    # PCL writes a float-typed rgb as the integer of its bits, open3d as the float: both are read.
    packed = np.array([0x00FF8000, 0x000102FF], dtype=np.uint32)
    as_float = packed.view(np.float32)
    lines = [f"1 2 3 {packed[0]} 7 8 9", f"4 5 6 {repr(float(as_float[1]))} 1 2 3"]
    for k, line in enumerate([lines, [lines[1], lines[0]]]):
        path = tmp_path / f"a{k}.pcd"
        path.write_text("VERSION .7\nFIELDS x y z rgb h\nSIZE 4 4 4 4 2\nTYPE F F F F I\nCOUNT 1 1 1 1 3\n"
                        "WIDTH 2\nHEIGHT 1\nPOINTS 2\nDATA ascii\n" + "\n".join(line) + "\n")
        cloud = read_pcd(path)
        h = cloud.fields["h"]
        assert h.dtype == np.int16 and h.shape == (2, 3)
        order = [0, 1] if k == 0 else [1, 0]
        np.testing.assert_array_equal(cloud.fields["colors"], np.array([[255, 128, 0], [1, 2, 255]])[order])
        np.testing.assert_array_equal(h, np.array([[7, 8, 9], [1, 2, 3]])[order])


def test_lzf_round_trip_and_overlap():
    rng = np.random.default_rng(1)
    data = rng.bytes(5000) + b"\x00" * 3000 + (b"\x00\x00\xc0\x7f" * 700) + rng.bytes(33) + b"abcd" * 3
    packed = lzf_compress(data)
    assert len(packed) < len(data) * 0.6
    assert lzf_decompress(packed, len(data)) == data
    # Hand-made stream: literal "ab", then a back-reference of 7 bytes at offset 2 (overlapping): "ababababa".
    assert lzf_decompress(bytes([1]) + b"ab" + bytes([(5 << 5) | 0, 1]), 9) == b"ababababa"
    with pytest.raises(PointCloudFileError, match="before the start"):
        lzf_decompress(bytes([0]) + b"a" + bytes([1 << 5, 5]), 4)
    with pytest.raises(PointCloudFileError, match="passes the end of the compressed data"):
        lzf_decompress(packed[:10], 20)
    with pytest.raises(PointCloudFileError, match=f"decompresses to {len(data)} bytes, the header declares"):
        lzf_decompress(packed, len(data) + 1)
    with pytest.raises(PointCloudFileError, match="expands past the 100 bytes"):
        lzf_decompress(packed, 100)


# ------------------------------------------------------------------------------------------------ other formats
def test_ply_ascii_with_label_and_faces(tmp_path):
    path = tmp_path / "a.ply"
    path.write_text("ply\nformat ascii 1.0\ncomment by hand\nelement vertex 3\nproperty float x\n"
                    "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
                    "property uchar blue\nproperty int label\nproperty float scalar_Intensity\n"
                    "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                    "0 0 0 255 0 0 3 0.5\n1 0 0 0 255 0 -1 0.25\n0 1.5 nan 0 0 255 7 1\n3 0 1 2\n")
    cloud = read_points(path)
    np.testing.assert_array_equal(cloud.points, [[0, 0, 0], [1, 0, 0], [0, 1.5, np.nan]])
    assert list(cloud.fields) == ["colors", "label", "scalar_Intensity"]
    np.testing.assert_array_equal(cloud.fields["colors"], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    assert cloud.fields["label"].dtype == np.int32
    np.testing.assert_array_equal(cloud.fields["label"], [3, -1, 7])
    np.testing.assert_array_equal(cloud.fields["scalar_Intensity"], np.float32([0.5, 0.25, 1]))


def test_ply_binary_round_trip_and_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    cloud = _cloud(organised=False)
    cloud.fields["class"] = np.arange(20, dtype=np.uint8)
    path = write_points(tmp_path / "b.ply", cloud)
    again = read_points(path)
    np.testing.assert_array_equal(again.points, cloud.points)
    assert list(again.fields) == ["colors", "label", "intensity", "normal_0", "normal_1", "normal_2", "ring",
                                  "time", "class"]
    for name in ("colors", "label", "intensity", "ring", "time", "class"):
        assert again.fields[name].dtype == cloud.fields[name].dtype
        np.testing.assert_array_equal(again.fields[name], cloud.fields[name])
    np.testing.assert_array_equal(again.fields["normal_1"], cloud.fields["normal"][:, 1])
    reference = o3d.io.read_point_cloud(str(path), remove_nan_points=False, remove_infinite_points=False)
    np.testing.assert_array_equal(np.asarray(reference.points).astype(np.float32), cloud.points)


def test_ply_big_endian_with_element_before_vertices(tmp_path):
    header = ("ply\nformat binary_big_endian 1.0\nelement camera 2\nproperty list uchar float view\n"
              "element vertex 2\nproperty double x\nproperty double y\nproperty double z\nproperty ushort class\n"
              "end_header\n").encode()
    cameras = struct.pack(">B2f", 2, 1.0, 2.0) + struct.pack(">B", 0)
    vertices = struct.pack(">dddH", 1.5, -2.0, 3.25, 513) + struct.pack(">dddH", 0, 1, 2, 7)
    path = tmp_path / "be.ply"
    path.write_bytes(header + cameras + vertices)
    cloud = read_points(path)
    np.testing.assert_array_equal(cloud.points, [[1.5, -2, 3.25], [0, 1, 2]])
    assert cloud.fields["class"].dtype == np.uint16
    np.testing.assert_array_equal(cloud.fields["class"], [513, 7])
    path.write_bytes(header + cameras + vertices[:-3])
    with pytest.raises(PointCloudFileError, match=r"be\.ply: truncated PLY binary data: expected 52 bytes"):
        read_points(path)


def test_off(tmp_path):
    path = tmp_path / "m.off"
    path.write_text("OFF\n# a tetrahedron\n4 4 6\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n")
    cloud = read_points(path)
    np.testing.assert_array_equal(cloud.points, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert cloud.fields == {} and (cloud.width, cloud.height) == (4, 1)
    path = tmp_path / "c.off"
    path.write_text("COFF 2 0 0\n0 0 0 255 0 0 255\n1 1 1 0 128 255 255\n")
    np.testing.assert_array_equal(read_points(path).fields["colors"], [[255, 0, 0], [0, 128, 255]])
    path.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n")
    with pytest.raises(PointCloudFileError, match="truncated OFF: 3 vertices"):
        read_points(path)


def test_xyz_and_txt(tmp_path):
    path = tmp_path / "c.xyz"
    path.write_text("0.5 1 2 255 0 10\n1 2 3 0 128 0\n")
    cloud = read_points(path)
    np.testing.assert_array_equal(cloud.points, [[0.5, 1, 2], [1, 2, 3]])
    np.testing.assert_array_equal(cloud.fields["colors"], [[255, 0, 10], [0, 128, 0]])
    path = tmp_path / "n.xyz"
    path.write_text("0 0 0 0.1 0.2 0.97\n1 1 1 0 0 1\n")
    assert list(read_points(path).fields) == ["feat_0", "feat_1", "feat_2"]
    path = tmp_path / "c.txt"
    path.write_text("// x,y,z,intensity,label\n1,2,3,0.5,4\n4,5,6,0.25,9\n")
    cloud = read_points(path, columns=["intensity", "label"])
    assert cloud.fields["label"].dtype == np.int64 and cloud.fields["intensity"].dtype == np.float32
    np.testing.assert_array_equal(cloud.fields["label"], [4, 9])
    path.write_text("x y z intensity label\n1 2 3 0.5 4\n4 5 6 0.25 9\n")
    assert list(read_points(path).fields) == ["intensity", "label"]
    path.write_text("1 2 3\n4 5 six\n")
    with pytest.raises(PointCloudFileError, match="c.txt: line 2: 'six' is not a number"):
        read_points(path)
    path.write_text("1 2 3 4\n1 2 3\n")
    with pytest.raises(PointCloudFileError, match="line 2 has 3 columns"):
        read_points(path)


def test_npy(tmp_path):
    path = tmp_path / "plain.npy"
    np.save(path, np.array([[0, 1, 2, 5], [3, 4, 5, 6]], dtype=np.float32))
    cloud = read_points(path, columns=["label"])
    np.testing.assert_array_equal(cloud.points, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(cloud.fields["label"], [5, 6])
    original = _cloud(organised=False)
    again = read_points(write_points(tmp_path / "s.npy", original))
    _assert_same(again, original)


# ------------------------------------------------------------------------------------------------ errors
def test_truncated_binary_pcd(tmp_path):
    path = write_pcd(tmp_path / "t.pcd", _cloud(), data="binary")
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    row = 3 * 4 + 4 + 4 + 4 + 12 + 2 + 8
    with pytest.raises(PointCloudFileError, match=rf"t\.pcd: truncated PCD binary data: expected {20 * row} "
                                                  rf"bytes .* got {20 * row - 10}"):
        read_pcd(path)
    path = write_pcd(tmp_path / "tc.pcd", _cloud(), data="binary_compressed")
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(PointCloudFileError, match="tc.pcd: truncated PCD binary_compressed data: expected"):
        read_pcd(path)


def test_bad_headers(tmp_path):
    path = tmp_path / "h.pcd"
    path.write_text("VERSION .7\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nHEIGHT 1\nPOINTS 1\nDATA ascii\n1 2 3\n")
    with pytest.raises(PointCloudFileError, match=r"h\.pcd: PCD header has no FIELDS line"):
        read_pcd(path)
    path.write_text("FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nHEIGHT 1\nPOINTS 3\nDATA ascii\n1 2 3\n")
    with pytest.raises(PointCloudFileError, match="POINTS 3 != WIDTH x HEIGHT"):
        read_pcd(path)
    path.write_text("FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nHEIGHT 1\nDATA ascii\n1 2 3\n4 5\n")
    with pytest.raises(PointCloudFileError, match="holds 5 values, the header declares 2 points x 3 values; "
                                                  "data line 2 has 2"):
        read_pcd(path)
    path.write_text("FIELDS x y z\nSIZE 4 4 3\nTYPE F F F\nWIDTH 1\nDATA binary\n")
    with pytest.raises(PointCloudFileError, match="field 'z' has TYPE F SIZE 3"):
        read_pcd(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    path = tmp_path / "cloud.las"
    path.write_bytes(b"LASF")
    with pytest.raises(PointCloudFileError, match=r"cloud\.las: unsupported point-cloud suffix '\.las'; "
                                                  r"supported: \.pcd, \.ply, \.off, \.xyz, \.txt, \.npy"):
        read_points(path)
    with pytest.raises(PointCloudFileError, match="cannot write point-cloud suffix"):
        write_points(tmp_path / "out.las", _cloud())
    with pytest.raises(PointCloudFileError, match="no such file"):
        read_points(tmp_path / "nothing.pcd")


def test_no_overwrite_without_flag(tmp_path):
    cloud = _cloud()
    path = write_pcd(tmp_path / "o.pcd", cloud)
    before = path.read_bytes()
    for suffix in (".pcd", ".ply", ".npy"):
        target = tmp_path / f"o{suffix}"
        if not target.exists():
            write_points(target, cloud)
        with pytest.raises(FileExistsError, match="overwrite=True"):
            write_points(target, cloud)
    assert path.read_bytes() == before
    write_pcd(path, cloud, data="ascii", overwrite=True)
    assert b"DATA ascii" in path.read_bytes()[:600]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npy", "o.pcd", "o.ply"]  # no temporary files left
