"""Output for print (issue 19): 16-bit RGB PNG and TIFF read back by independent readers
(pypng, tifffile) with their profile, resolution and settings; an sRGB profile in every
format; the refusals in one line; --size native."""

from __future__ import annotations

import io
import json

import numpy as np
import png
import pytest
import tifffile
from PIL import Image, ImageCms
from typer.testing import CliRunner

from nst_onnx.cli import app
from nst_onnx.errors import BadInput
from nst_onnx.io.images import bit_depth, encode_image, srgb_profile
from nst_onnx.io.wide import png16, tiff16


def _rgb16(h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([x * 1200, y * 1700, (x + y) * 600], -1)
    return (smooth + rng.integers(0, 40, (h, w, 3))).clip(0, 65535).astype(np.uint16)


def test_png16_reads_back_exactly_with_its_profile_dpi_and_text():
    rgb = _rgb16()
    data = png16(rgb, srgb_profile(), 300, {"nst-onnx": '{"a": 1}'})
    reader = png.Reader(bytes=data)
    w, h, rows, info = reader.read()
    got = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, 3)
    assert info["bitdepth"] == 16 and info["planes"] == 3 and np.array_equal(got, rgb)
    assert info["physical"][:2] == (round(300 / 0.0254),) * 2
    pil = Image.open(io.BytesIO(data))  # Pillow reads it too (as 8 bits), profile included
    assert pil.size == (53, 37) and pil.info["icc_profile"] == srgb_profile()
    assert json.loads(pil.text["nst-onnx"]) == {"a": 1}


def test_tiff16_reads_back_exactly_with_its_profile_dpi_and_description():
    rgb = _rgb16(29, 41)
    data = tiff16(rgb, srgb_profile(), 300, '{"a": 1}')
    with tifffile.TiffFile(io.BytesIO(data)) as t:
        page = t.pages[0]
        assert np.array_equal(page.asarray(), rgb)
        assert page.tags[34675].value == srgb_profile()
        assert page.tags["XResolution"].value == (30000, 100)
        assert json.loads(page.description) == {"a": 1}


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "tif"])
def test_every_output_carries_the_srgb_profile(ext):
    img = Image.fromarray(_rgb16(20, 30).astype(np.float64).__floordiv__(257).astype(np.uint8))
    data = encode_image(img, f"x.{ext}", {"k": "v"}, dpi=150)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(Image.open(io.BytesIO(data)).info["icc_profile"]))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


def test_sixteen_bits_come_from_the_float_image_not_the_8_bit_one():
    x = np.linspace(0, 255, 64 * 3).reshape(8, 8, 3)  # steps finer than 8 bits resolve
    img = Image.fromarray(np.rint(x).astype(np.uint8))
    with tifffile.TiffFile(io.BytesIO(encode_image(img, "x.tif", pixels=x))) as t:
        got = t.pages[0].asarray()
    assert np.abs(got / 65535 * 255 - x).max() < 0.5 / 257
    assert len(np.unique(got)) == 64 * 3


def test_bit_depth_defaults_and_refusals():
    assert bit_depth("a.tif") == 16 and bit_depth("a.png") == 8 and bit_depth("a.png", 16) == 16
    for name in ("a.jpg", "a.webp", "a.bmp"):
        with pytest.raises(BadInput, match=r"16 bits need \.png, \.tif"):
            bit_depth(name, 16)


def test_a_16_bit_run_end_to_end_and_size_native(models_dir, tmp_path):
    """--size native is the content's own size; the TIFF holds 16 bits of the optimiser's
    image with the settings, and JPEG refuses 16 bits in one line before any work."""
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    Image.fromarray(_rgb16(40, 56).__floordiv__(257).astype(np.uint8)).save(content)
    Image.fromarray(_rgb16(48, 48, 1).__floordiv__(257).astype(np.uint8)).save(style)
    out = tmp_path / "o.tif"
    args = ["stylize", str(content), str(style), "-o", str(out), "--size", "native",
            "--iterations", "2", "--dpi", "300", "--models", str(models_dir)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    with tifffile.TiffFile(out) as t:
        page = t.pages[0]
        assert page.asarray().shape == (40, 56, 3) and page.asarray().dtype == np.uint16
        assert json.loads(json.loads(page.description)["nst-onnx"])["width"] == 56
    r = CliRunner().invoke(app, [*args[:4], str(tmp_path / "o.jpg"), *args[5:], "--bit-depth",
                                 "16"])
    assert r.exit_code == 2 and "16 bits need" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_too_little_disk_for_the_output_is_refused_before_the_run(models_dir, tmp_path,
                                                                  monkeypatch):
    import shutil
    from collections import namedtuple

    content = tmp_path / "c.png"
    Image.fromarray(_rgb16(40, 56).__floordiv__(257).astype(np.uint8)).save(content)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    content.with_name("s.png").write_bytes(content.read_bytes())
    r = CliRunner().invoke(app, ["stylize", str(content), str(content.with_name("s.png")),
                                 "-o", str(tmp_path / "o.tif"), "--size", "1024",
                                 "--models", str(models_dir)])
    assert r.exit_code == 2 and "the output needs up to 4 MB" in r.output, r.output  # 16-bit
    assert len(r.output.strip().splitlines()) == 1
