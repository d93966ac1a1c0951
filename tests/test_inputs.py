"""Whatever users feed it: image formats and modes, hostile headers, paths, atomic saves,
numerics. Each case is a defined behaviour (README: "When things go wrong")."""

from __future__ import annotations

import io
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from nst_onnx.errors import BadInput
from nst_onnx.io.images import load_image


def _gradient(w=40, h=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)


def test_formats_load_as_rgb(tmp_path):
    arr = _gradient()
    for ext in ("png", "jpg", "webp", "tiff", "bmp", "gif"):
        p = tmp_path / f"a.{ext}"
        Image.fromarray(arr).save(p)
        img = load_image(p)
        assert img.mode == "RGB" and img.size == (40, 30), ext


def test_modes_palette_grey_cmyk_16bit(tmp_path):
    arr = _gradient()
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png")
    Image.fromarray(arr).convert("L").save(tmp_path / "l.png")
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg")
    grey16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    for name in ("p.png", "l.png", "c.jpg"):
        assert load_image(tmp_path / name).mode == "RGB"
    g = np.asarray(load_image(tmp_path / "g16.png"))
    # scaled to 8 bits, not clipped at 255
    assert g[0, 0, 0] == 0 and g[-1, -1, 0] == 255 and 100 < g[15, 20, 0] < 160


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 5:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert (out[:, :5] == 255).all()
    assert (out[:, 5:] == [255, 0, 0]).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_gradient(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "o.jpg").size == (30, 40)


def test_icc_profile_is_converted(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_gradient()).save(tmp_path / "icc.png", icc_profile=srgb)
    out = np.asarray(load_image(tmp_path / "icc.png")).astype(int)
    assert np.abs(out - _gradient()).max() <= 2  # sRGB → sRGB is (nearly) the identity


def test_animation_uses_first_frame_and_says_so(tmp_path):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    said = []
    img = load_image(tmp_path / "anim.gif", warn=said.append)
    assert np.asarray(img)[0, 0, 0] < 50
    assert said and "2 frames" in said[0]


def _png_claiming(w: int, h: int) -> bytes:
    """A real small PNG whose IHDR (and its CRC) is rewritten to claim w×h pixels."""
    buf = io.BytesIO()
    Image.fromarray(_gradient(8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = b"IHDR" + struct.pack(">II", w, h) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_decompression_bomb_header_is_refused_fast(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_claiming(100_000, 100_000))
    t = time.perf_counter()
    with pytest.raises(BadInput, match="10000 Mpx.*--max-image-pixels"):
        load_image(p)
    assert time.perf_counter() - t < 2.0


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (b"GIF89a not really", "not a readable image"),
])
def test_broken_files(tmp_path, content, match):
    p = tmp_path / "x.gif"
    p.write_bytes(content)
    with pytest.raises(BadInput, match=match):
        load_image(p)


def test_truncated_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buf, "PNG")
    p = tmp_path / "t.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadInput, match="not a readable image"):
        load_image(p)


def test_kill_9_during_save_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous image")
    script = (
        "import sys, time\n"
        "from nst_onnx.io.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    f = open(tmp, 'wb'); f.write(b'half'); f.flush()\n"
        "    print('writing', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(60, p.kill)  # a child that never prints must not hang the suite
    timer.start()
    try:
        assert p.stdout.readline().strip() == "writing"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        timer.cancel()
        p.kill()
    assert target.read_bytes() == b"previous image"


def test_non_finite_loss_stops_and_keeps_best():
    from nst_onnx.run.binding import Terms
    from nst_onnx.run.scipy_lbfgs import lbfgs

    calls = []

    def evaluate(x):
        calls.append(1)
        loss = float(np.sum((x - 100.0) ** 2))
        if len(calls) > 4:
            loss = float("nan")
        return Terms(loss, (2 * (x - 100.0)).astype(np.float32)[None], {})

    x0 = np.zeros((3, 4, 5))
    res = lbfgs(evaluate, x0, iterations=50, history=10)
    assert "not finite" in res.stop_reason
    assert np.isfinite(res.loss) and res.loss < np.sum((x0 - 100.0) ** 2)
    assert np.all((res.x >= 0) & (res.x <= 255))


def test_the_smallest_working_size_is_found_in_closed_form():
    """A 1×5000 picture used to step one pixel (and one resize) at a time."""
    from nst_onnx.io.images import fit_longest_side
    from nst_onnx.problem import _smallest_side

    for size, start, m in [((640, 480), 32, 32), ((300, 17), 40, 16), ((999, 1000), 16, 32),
                           ((50, 3), 16, 16)]:
        img = Image.new("RGB", size)
        need = start
        while min(fit_longest_side(img, need).size) < m:
            need += 1
        assert _smallest_side(size, start, m) == need
    assert _smallest_side((1, 5000), 64, 32) == 157_500  # 31.5 px short side rounds to 32


def test_init_image_as_output_is_refused(models_dir, tmp_path):
    from typer.testing import CliRunner

    from nst_onnx.cli import app

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for p in (a, b):
        Image.new("RGB", (64, 48)).save(p)
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 48)).save(init)
    r = CliRunner().invoke(app, ["stylize", str(a), str(b), "--init", str(init), "-o", str(init),
                                 "--models", str(models_dir)])
    assert r.exit_code == 2 and "is one of the inputs" in r.output
