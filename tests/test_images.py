"""Images as cameras write them (data/images.py): one test per file format, asserting the pixel
values that reach the model (``image_to_unit_tensor(load_image(path), side)`` at the file's own
side, so no resize blurs them), and the masks read at their real values."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from data.images import (ImageReadError, image_to_unit_tensor, load_image, load_mask, orient, read_pixels,
                         scale_to_8bit)


def _unit(path, side: int) -> torch.Tensor:
    """What the model's input transform makes of the file, before normalisation: (3, S, S) in [0, 1]."""
    return image_to_unit_tensor(load_image(path), side)


def _grey(values: np.ndarray) -> torch.Tensor:
    """levels 0..255 (h, w) -> the (3, h, w) unit tensor of a grey image."""
    return torch.from_numpy(values.astype(np.float32) / 255).expand(3, *values.shape)


def _ramp(side: int, top: int, dtype) -> np.ndarray:
    """(side, side) values 0..top row by row."""
    return np.round(np.linspace(0, top, side * side)).reshape(side, side).astype(dtype)


def test_an_8bit_grey_png_keeps_its_values(tmp_path):
    values = _ramp(16, 255, np.uint8)
    Image.fromarray(values).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g8.png").mode == "L"
    torch.testing.assert_close(_unit(tmp_path / "g8.png", 16), _grey(values), rtol=0, atol=0)


def test_a_16bit_grey_png_of_12bit_data_fills_the_8_bits(tmp_path):
    values = _ramp(16, 4095, np.uint16)  # a 12-bit camera's 0..4095 in a 16-bit file
    assert cv2.imwrite(str(tmp_path / "g16.png"), values)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    want = np.round(values / 4095 * 255).astype(np.uint8)  # 0..max -> 0..255
    torch.testing.assert_close(_unit(tmp_path / "g16.png", 16), _grey(want), rtol=0, atol=0)
    assert read_pixels(tmp_path / "g16.png").dtype == np.uint16 and read_pixels(tmp_path / "g16.png").max() == 4095


def test_a_16bit_tiff_scales_from_zero_to_its_maximum(tmp_path):
    levels = np.arange(64, 256, dtype=np.uint16).reshape(12, 16)  # the 8-bit levels wanted
    values = levels * np.uint16(160)  # 10240..40800 = 160 * 255: the black level is kept, not stretched
    Image.fromarray(values).save(tmp_path / "g16.tif")
    assert Image.open(tmp_path / "g16.tif").mode == "I;16"
    got = image_to_unit_tensor(load_image(tmp_path / "g16.tif"), (12, 16))
    torch.testing.assert_close(got, _grey(levels), rtol=0, atol=0)


def test_a_float32_tiff_is_scaled_not_blacked_out(tmp_path):
    values = np.linspace(0, 0.8, 256, dtype=np.float32).reshape(16, 16)  # a [0, 1] float image, max 0.8
    Image.fromarray(values).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    want = np.round(values.astype(np.float64) / 0.8 * 255).astype(np.uint8)
    torch.testing.assert_close(_unit(tmp_path / "f.tif", 16), _grey(want), rtol=0, atol=0)
    # values below 0 (a height map): the range starts at the minimum
    signed = np.array([[-2.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    Image.fromarray(signed).save(tmp_path / "s.tif")
    assert np.array(load_image(tmp_path / "s.tif"))[..., 0].tolist() == [[0, 128], [191, 255]]


def test_a_32bit_integer_tiff_is_scaled(tmp_path):
    values = np.array([[0, 1_000_000], [2_000_000, 4_000_000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert np.array(load_image(tmp_path / "i.tif"))[..., 1].tolist() == [[0, 64], [128, 255]]


def test_a_16bit_colour_png_keeps_its_low_bytes(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 4095, 2048, 100  # 12-bit data; PIL alone would keep 15, 8, 0
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    assert np.array(Image.open(tmp_path / "c16.png"))[0, 0].tolist() == [15, 8, 0]
    assert np.array(load_image(tmp_path / "c16.png"))[0, 0].tolist() == [255, 128, 6]  # one range for all channels


def test_a_cmyk_jpeg_becomes_its_rgb_colours(tmp_path):
    cmyk = np.zeros((32, 64, 4), np.uint8)
    cmyk[:, :16] = (0, 255, 255, 0)     # red
    cmyk[:, 16:32] = (255, 0, 255, 0)   # green
    cmyk[:, 32:48] = (0, 0, 0, 128)     # grey: (255 - 128) = 127
    cmyk[:, 48:] = (128, 0, 0, 128)     # R = 255 (1 - 128/255)(1 - 128/255) = 63, G = B = 127
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    got = image_to_unit_tensor(load_image(tmp_path / "c.jpg"), (32, 64))[:, :, [8, 24, 40, 56]].mean(dim=1) * 255  # block centres, [3, 4]
    want = torch.tensor([[255, 0, 0], [0, 255, 0], [127, 127, 127], [63, 127, 127]], dtype=torch.float32).t()
    torch.testing.assert_close(got, want, rtol=0, atol=6)  # JPEG's rounding


def test_an_exif_rotated_jpeg_is_seen_upright(tmp_path):
    stored = np.full((20, 40, 3), 255, np.uint8)  # stored landscape 40 x 20, a red mark at the top left
    stored[:6, :6] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view"
    Image.fromarray(stored).save(tmp_path / "r.jpg", quality=95, exif=exif)
    img = load_image(tmp_path / "r.jpg")
    assert img.size == (20, 40)  # (w, h): portrait
    arr = np.asarray(img).astype(int)
    assert (np.abs(arr[:4, -4:] - (255, 0, 0)) < 30).all()  # the mark is now at the top right
    assert (np.abs(arr[-4:, :4] - 255) < 30).all() and (np.abs(arr[:4, :4] - 255) < 30).all()
    t = image_to_unit_tensor(img, (40, 20))  # (h, w): no resize
    assert t.shape == (3, 40, 20) and t[1, :4, -4:].max() < 0.15 and t[1, :4, :4].min() > 0.85


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_as_pillow_does(orientation):
    stored = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    want = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(orient(stored, orientation), want)


def test_a_16bit_defect_is_not_flattened_to_white(tmp_path):
    part = np.full((32, 32), 1000, np.uint16)  # background
    part[4:28, 4:28] = 3000                  # the part
    part[12:16, 12:16] = 2000                # a darker defect on it
    assert cv2.imwrite(str(tmp_path / "d16.png"), part)
    with Image.open(tmp_path / "d16.png") as im:  # what .convert('RGB') used to give: all white
        assert np.array(im.convert("RGB")).min() == 255
    t = _unit(tmp_path / "d16.png", 32)
    assert t[0, 0, 0].item() == pytest.approx(85 / 255)       # 1000 / 3000 * 255
    assert t[0, 8, 8].item() == 1.0                           # the part
    assert t[0, 13, 13].item() == pytest.approx(170 / 255)    # the defect stands out
    # and the whole model input, resized: the defect is darker than the part around it
    small = _unit(tmp_path / "d16.png", 16)
    assert small[0, 6:8, 6:8].max() < small[0, 3, 3] - 0.2


def test_masks_are_binarised_at_their_real_values(tmp_path):
    labels = np.zeros((8, 8), np.uint16)
    labels[1, 1], labels[2, 2], labels[3, 3] = 1, 256, 65535  # label 1 would vanish if cut to the high byte
    assert cv2.imwrite(str(tmp_path / "m16.png"), labels)
    mask = load_mask(tmp_path / "m16.png", (8, 8))
    assert mask.dtype == bool and mask.sum() == 3 and mask[1, 1] and mask[2, 2] and mask[3, 3]
    Image.fromarray(np.where(labels > 0, 0.25, 0.0).astype(np.float32)).save(tmp_path / "mf.tif")
    assert np.array_equal(load_mask(tmp_path / "mf.tif", (8, 8)), labels > 0)
    grey = np.zeros((8, 8), np.uint8)
    grey[5, 5] = 1
    Image.fromarray(grey).save(tmp_path / "m8.png")
    assert load_mask(tmp_path / "m8.png", (8, 8)).sum() == 1


def test_constant_images_do_not_divide_by_zero(tmp_path):
    with np.errstate(all="raise"):
        assert scale_to_8bit(np.zeros((3, 3), np.uint16)).tolist() == [[0] * 3] * 3
        assert scale_to_8bit(np.full((2, 2), 700, np.uint16)).tolist() == [[255] * 2] * 2  # 0..700
        assert scale_to_8bit(np.full((2, 2), -1.5, np.float32)).tolist() == [[0] * 2] * 2
    assert cv2.imwrite(str(tmp_path / "zero.png"), np.zeros((4, 4), np.uint16))
    assert np.array(load_image(tmp_path / "zero.png")).max() == 0


def test_what_cannot_be_read_faithfully_is_refused_naming_the_file(tmp_path):
    bad = np.ones((4, 4), np.float32)
    bad[1, 2] = np.nan
    bad[3, 3] = np.inf
    Image.fromarray(bad).save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match=r"^image .*nan\.tif holds 2 NaN or infinite value\(s\): it has no "
                                             r"faithful 8-bit scale$"):
        load_image(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match=r"mask .*nan\.tif holds NaN or infinite values"):
        load_mask(tmp_path / "nan.tif", (4, 4))
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 255)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageReadError, match=r"^image .*pages\.tif holds 2 frames \(pages\): which one is meant is "
                                             r"ambiguous"):
        load_image(tmp_path / "pages.tif")
    for err in ("nan.tif", "pages.tif"):
        with pytest.raises(ImageReadError) as exc:
            load_image(tmp_path / err)
        assert "\n" not in str(exc.value)


def test_8bit_colour_files_read_as_before(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    for name in ("a.png", "p.png"):
        with Image.open(tmp_path / name) as im:
            want = np.array(im.convert("RGB"))
        got = load_image(tmp_path / name)
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), want)
