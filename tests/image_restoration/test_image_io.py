import struct
import zlib

import cv2
import numpy as np
import pytest

from mtp.datasets.image_restoration.image_io import (IMAGE_EXTENSIONS, ImageReadError, declared_size, read_image,
                                                      write_image)


@pytest.fixture(scope="module")
def set5_png(data_dir):
    return data_dir / "sr" / "Set5" / "image_SRF_4" / "img_002_SRF_4_HR.png"


def _tiff_bytes(height, width, samples, dtype=np.uint8, sample_format=1):
    """A minimal uncompressed little-endian TIFF with one strip, for layouts OpenCV cannot write.

    BitsPerSample and SampleFormat are given once; readers apply a single value to every sample.
    """
    pixels = (np.arange(height * width * samples) % 200).astype(dtype).tobytes()
    bits = np.dtype(dtype).itemsize * 8
    entries = [(256, width), (257, height), (258, bits), (259, 1), (262, 2 if samples >= 3 else 1),
               (277, samples), (278, height), (279, len(pixels)), (339, sample_format)]
    pixel_offset = 8 + 2 + 12 * (len(entries) + 1) + 4
    ifd = struct.pack("<H", len(entries) + 1)
    for tag, value in sorted(entries + [(273, None)]):
        if tag == 273:  # StripOffsets, a LONG
            ifd += struct.pack("<HHII", tag, 4, 1, pixel_offset)
        else:
            ifd += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels


def test_reads_rgb_like_opencv(set5_png):
    image = read_image(set5_png)
    bgr = cv2.imread(str(set5_png), cv2.IMREAD_COLOR)
    assert image.rgb.dtype == np.float32 and image.rgb.shape == bgr.shape
    np.testing.assert_array_equal(np.round(image.rgb * 255).astype(np.uint8), bgr[..., ::-1])
    assert image.bit_depth == 8 and not image.is_gray and image.alpha is None and image.path == set5_png
    assert (image.height, image.width) == bgr.shape[:2]
    assert ".png" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_8bit_round_trip(tmp_path, set5_png, suffix):
    image = read_image(set5_png)
    out = write_image(tmp_path / f"copy{suffix}", image.rgb)
    back = read_image(out)
    np.testing.assert_array_equal(back.rgb, image.rgb)
    assert back.bit_depth == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"copy{suffix}"], "temporary file left behind"


def test_16bit_gray_and_rgba_round_trips(tmp_path, set5_png):
    image = read_image(set5_png)
    # Values between the 8-bit levels survive only at 16 bit.
    smooth = cv2.GaussianBlur(image.rgb, (0, 0), 1.5)
    back16 = read_image(write_image(tmp_path / "deep.png", smooth, bit_depth=16))
    assert back16.bit_depth == 16 and not back16.is_gray
    assert np.abs(back16.rgb - smooth).max() <= 0.5 / 65535 + 1e-7
    assert np.abs(np.round(smooth * 255) / 255 - smooth).max() > 1e-3

    gray = read_image(write_image(tmp_path / "gray.png", image.rgb, is_gray=True))
    assert gray.is_gray and gray.rgb.shape == image.rgb.shape
    np.testing.assert_array_equal(gray.rgb[..., 0], gray.rgb[..., 2])
    luma = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
    assert np.abs(gray.rgb[..., 0] - luma).max() <= 0.5 / 255 + 1e-6
    # A gray image written back as gray is unchanged, also at 16 bit.
    gray_again = read_image(write_image(tmp_path / "gray16.tif", gray.rgb, bit_depth=16, is_gray=True))
    assert gray_again.is_gray and gray_again.bit_depth == 16
    assert np.abs(gray_again.rgb - gray.rgb).max() <= 0.5 / 65535 + 1e-7

    alpha = np.linspace(0, 1, image.width, dtype=np.float32)[None, :].repeat(image.height, 0)
    rgba = read_image(write_image(tmp_path / "rgba.png", image.rgb, alpha=alpha))
    np.testing.assert_array_equal(rgba.rgb, image.rgb)
    assert rgba.alpha is not None and np.abs(rgba.alpha - alpha).max() <= 0.5 / 255 + 1e-6


def test_jpeg_and_webp_round_trip(tmp_path, set5_png):
    image = read_image(set5_png)
    for suffix in (".jpg", ".webp"):
        back = read_image(write_image(tmp_path / f"lossy{suffix}", image.rgb, quality=95))
        assert back.bit_depth == 8 and back.rgb.shape == image.rgb.shape
        assert 0 < np.abs(back.rgb - image.rgb).mean() < 0.02


def test_refuses_to_overwrite_unless_asked(tmp_path, set5_png):
    image = read_image(set5_png)
    target = write_image(tmp_path / "out.png", image.rgb)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="out.png"):
        write_image(target, 1 - image.rgb)
    assert target.read_bytes() == before
    write_image(target, 1 - image.rgb, overwrite=True)
    np.testing.assert_allclose(read_image(target).rgb, 1 - image.rgb, atol=0.5 / 255 + 1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_rejects_impossible_requests(tmp_path, set5_png):
    rgb = read_image(set5_png).rgb
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "a.jpg", rgb, bit_depth=16)
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "a.jpg", rgb, alpha=rgb[..., 0])
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "a.gif", rgb)
    with pytest.raises(ValueError, match="H x W x 3"):
        write_image(tmp_path / "a.png", rgb[..., :2])
    assert list(tmp_path.iterdir()) == []


def test_broken_png_files_are_rejected(tmp_path, set5_png):
    data = set5_png.read_bytes()
    cases = {
        "empty.png": b"",
        "text.png": b"this is a text file, not an image\n",
        "cut_header.png": data[:40],
        "cut_middle.png": data[: len(data) // 2],
        "no_iend.png": data[:-12],
        "flipped_byte.png": data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="0 bytes"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


def test_truncated_jpeg_is_rejected_although_opencv_decodes_it(tmp_path, set5_png):
    rgb = read_image(set5_png).rgb
    for progressive in (False, True):
        ok, encoded = cv2.imencode(".jpg", (rgb[..., ::-1] * 255).round().astype(np.uint8),
                                   [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
        data = encoded.tobytes()
        (tmp_path / "whole.jpg").write_bytes(data)
        assert read_image(tmp_path / "whole.jpg").rgb.shape == rgb.shape
        for cut in (len(data) // 3, len(data) - 2):
            path = tmp_path / f"cut_{int(progressive)}_{cut}.jpg"
            path.write_bytes(data[:cut])
            assert cv2.imread(str(path)) is not None, "OpenCV accepts this truncated file"
            with pytest.raises(ImageReadError, match="truncated"):
                read_image(path)


@pytest.mark.parametrize("suffix", [".bmp", ".webp", ".tif"])
def test_other_truncated_formats_are_rejected(tmp_path, set5_png, suffix):
    full = write_image(tmp_path / f"full{suffix}", read_image(set5_png).rgb)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(cut)


def test_unsupported_layouts_and_small_images(tmp_path, set5_png):
    (tmp_path / "five.tif").write_bytes(_tiff_bytes(6, 5, samples=5))
    with pytest.raises(ImageReadError, match="5 channels"):
        read_image(tmp_path / "five.tif")
    (tmp_path / "float.tif").write_bytes(_tiff_bytes(6, 5, samples=1, dtype=np.float32, sample_format=3))
    with pytest.raises(ImageReadError, match="8- or 16-bit"):
        read_image(tmp_path / "float.tif")
    (tmp_path / "gray8.tif").write_bytes(_tiff_bytes(6, 5, samples=1))
    assert read_image(tmp_path / "gray8.tif").is_gray
    with pytest.raises(ImageReadError, match="at least 100x100"):
        read_image(set5_png.with_name("img_002_SRF_4_LR.png"), min_size=100)
    assert read_image(set5_png, min_size=100).width == 288
    jpeg_named_png = tmp_path / "really_a_jpeg.png"
    ok, encoded = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    jpeg_named_png.write_bytes(encoded.tobytes())
    with pytest.raises(ImageReadError, match="PNG signature"):
        read_image(jpeg_named_png)


@pytest.mark.parametrize("suffix", IMAGE_EXTENSIONS)
def test_declared_size_read_from_the_header(tmp_path, set5_png, suffix):
    image = read_image(set5_png)
    crop = image.rgb[:37, :53]  # sides that differ, so a swapped height/width shows
    path = write_image(tmp_path / f"crop{suffix}", crop, quality=90)
    assert declared_size(path.read_bytes(), suffix) == (37, 53)
    lossless = write_image(tmp_path / "lossless.webp", crop, quality=101)  # WebP's lossless (VP8L) form
    assert declared_size(lossless.read_bytes(), ".webp") == (37, 53)
    rgba = write_image(tmp_path / "rgba.webp", crop, alpha=np.ones(crop.shape[:2], np.float32) * 0.5)
    assert declared_size(rgba.read_bytes(), ".webp") == (37, 53)


def test_images_over_the_pixel_limit_fail_before_decoding(tmp_path, set5_png):
    image = read_image(set5_png)
    pixels = image.height * image.width
    assert read_image(set5_png, max_pixels=pixels).height == image.height
    with pytest.raises(ImageReadError, match=rf"{image.height}x{image.width} .*at most .* Mpixel.*because"):
        read_image(set5_png, max_pixels=pixels - 1, max_pixels_reason=" because")
    # a header declaring 60000 x 60000 pixels in a tiny, structurally valid PNG is refused, not decoded
    data = bytearray(set5_png.read_bytes())
    data[16:24] = struct.pack(">II", 60000, 60000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    huge = tmp_path / "huge.png"
    huge.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"huge.png: image is 60000x60000 \(3600.0 Mpixel\)"):
        read_image(huge, max_pixels=10 ** 8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    from PIL import Image as PILImage
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (5, 8, 3), dtype=np.uint8)        # not square: rotations change the shape
    image = PILImage.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"
    image.save(path, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(path)).convert("RGB"))
    got = read_image(path)
    assert got.rgb.shape[:2] == expected.shape[:2]
    np.testing.assert_array_equal(np.round(got.rgb * 255).astype(np.uint8), expected)
