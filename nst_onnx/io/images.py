"""Image I/O: load (orientation, colour mode, alpha), resize, convert, save atomically."""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from ..config import MAX_PIXELS
from ..errors import BadInput
from .atomic import regular_file, write_bytes

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
           ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}

WIDE_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(src, what: str = "image", max_pixels: int | None = MAX_PIXELS,
               warn: Callable[[str], None] | None = None) -> Image.Image:
    """Path, PIL image or uint8 array → 8-bit sRGB PIL image.

    * EXIF orientation is applied; an embedded ICC profile is converted to sRGB;
    * transparency is composited over white (what a viewer shows);
    * palette, greyscale, CMYK and 16-bit greyscale become 8-bit RGB (16-bit scaled, not clipped);
    * animations give their first frame (and say so);
    * a header claiming more than ``max_pixels`` is refused before any pixel is decoded.
    """
    warn = warn or (lambda m: None)
    if isinstance(src, EncodedImage):  # a file's bytes that travelled (batch jobs on Ray)
        img = _decode(io.BytesIO(src.data), src.name, what, max_pixels)
    elif isinstance(src, np.ndarray):
        arr = src
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise BadInput(f"{what}: array of shape {arr.shape}; expected (H, W, 3) uint8")
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif isinstance(src, Image.Image):
        img = src
    else:
        img = _open(Path(src), what, max_pixels)
        if getattr(img, "n_frames", 1) > 1:
            warn(f"{what} {Path(src).name} has {img.n_frames} frames: using the first")
    return _to_srgb(img, what, warn)


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes and its name, read where the file is and decoded elsewhere."""

    name: str
    data: bytes

    @classmethod
    def read(cls, path: str | os.PathLike) -> EncodedImage:
        return cls(str(path), Path(path).read_bytes())


def _open(path: Path, what: str, max_pixels: int | None) -> Image.Image:
    if not path.exists():
        raise BadInput(f"{what} not found: {path}")
    return _decode(regular_file(path, what), path, what, max_pixels)


def _decode(src, path, what: str, max_pixels: int | None) -> Image.Image:
    """Decode a file (path or file object) named ``path``: hostile headers refused first."""
    if (src.getbuffer().nbytes if isinstance(src, io.BytesIO) else Path(src).stat().st_size) == 0:
        raise BadInput(f"{what} {path} is an empty file")
    try:
        with _no_pillow_limit():
            img = Image.open(src)  # reads the header only
            w, h = img.size
            if max_pixels and w * h > max_pixels:
                raise BadInput(
                    f"{what} {path} claims {w}×{h} pixels ({w * h / 1e6:.0f} Mpx), over the "
                    f"{max_pixels / 1e6:.0f} Mpx safety limit; if you trust it, pass "
                    f"--max-image-pixels {w * h}")
            img.load()
    except BadInput:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e) or e.__class__.__name__
        raise BadInput(f"{what} {path} is not a readable image ({reason})") from None
    return img


class _no_pillow_limit:
    """We enforce our own (configurable) limit from the header; silence Pillow's."""

    def __enter__(self):
        self.saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc):
        Image.MAX_IMAGE_PIXELS = self.saved


def _to_srgb(img: Image.Image, what: str, warn: Callable[[str], None]) -> Image.Image:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as e:  # a malformed EXIF block Pillow itself decoded past: so do we
        warn(f"{what}: ignoring its malformed EXIF data ({str(e)[:80] or e.__class__.__name__})")
    icc = img.info.get("icc_profile")
    if img.mode in WIDE_16BIT:
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), "L")
    if icc and img.mode in ("RGB", "RGBA", "CMYK", "L"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
            img = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"),
                                            outputMode=out_mode)
        except (ImageCms.PyCMSError, OSError, ValueError) as e:
            warn(f"{what}: ignoring its colour profile ({e})")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def fit_longest_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (Lanczos) so the longest side is ``size``; the aspect ratio is kept."""
    new = fitted_size(img.size, size)
    return img if new == img.size else img.resize(new, Image.LANCZOS)


def fitted_size(wh: tuple[int, int], size: int) -> tuple[int, int]:
    """(w, h) of a ``wh`` picture resized to longest side ``size``: known before resizing."""
    w, h = wh
    scale = size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def to_nchw(img: Image.Image) -> np.ndarray:
    """RGB PIL image → float32 (1, 3, H, W) in [0, 255]."""
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None].copy()


def to_pil(x: np.ndarray) -> Image.Image:
    """(H, W, 3) or (1, 3, H, W) float in [0, 255] → uint8 RGB PIL image (rounded, clipped)."""
    if x.ndim == 4:
        x = x[0].transpose(1, 2, 0)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "RGB")


def output_format(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise BadInput(f"cannot tell the image format of {path}: use one of "
                       + ", ".join(sorted(FORMATS)))
    return FORMATS[ext]


DEEP_FORMATS = ("PNG", "TIFF")  # those that carry 16 bits per channel here


def bit_depth(path: str | os.PathLike, asked: int | None = None) -> int:
    """Bits per channel of the output ``path``: ``asked``, else 16 for TIFF (print) and 8
    for the rest; 16 where the format cannot carry it is refused in one line."""
    fmt = output_format(path)
    if asked is None:
        return 16 if fmt == "TIFF" else 8
    if asked not in (8, 16):
        raise BadInput(f"--bit-depth {asked}: 8 or 16")
    if asked == 16 and fmt not in DEEP_FORMATS:
        raise BadInput(f"{Path(path).name}: {fmt} holds 8 bits per channel; 16 bits need "
                       ".png, .tif or .tiff")
    return asked


@functools.cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile (Pillow's littleCMS makes it): embedded in every output, so a
    print shop or a colour-managed viewer reads the colours as meant."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def encode_image(img: Image.Image, path: str | os.PathLike, metadata: dict | None = None,
                 pixels: np.ndarray | None = None, depth: int | None = None,
                 dpi: float | None = None) -> bytes:
    """The file ``path`` would hold, format from its extension, with the sRGB profile;
    ``metadata`` as PNG text chunks or the TIFF description (a batch worker encodes, the
    driver writes). 16 bits per channel (:func:`bit_depth`) come from ``pixels``, the
    float (H, W, 3) image in [0, 255] (else from ``img``, scaled)."""
    fmt = output_format(path)
    if bit_depth(path, depth) == 16:
        return _encode16(img, fmt, metadata, pixels, dpi)
    kwargs: dict = {"icc_profile": srgb_profile()} if fmt != "BMP" else {}
    if dpi and fmt in ("PNG", "JPEG", "TIFF"):
        kwargs["dpi"] = (dpi, dpi)
    if fmt == "PNG" and metadata:
        info = PngImagePlugin.PngInfo()
        for k, v in metadata.items():
            info.add_itxt(k, str(v))
        kwargs["pnginfo"] = info
    elif fmt == "TIFF" and metadata:
        kwargs["description"] = json.dumps(metadata, default=str)
    elif fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = 95
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _encode16(img: Image.Image, fmt: str, metadata: dict | None, pixels: np.ndarray | None,
              dpi: float | None) -> bytes:
    from .wide import png16, tiff16

    x = np.asarray(img, np.float64) if pixels is None else np.asarray(pixels, np.float64)
    rgb = np.clip(np.rint(x * (65535 / 255)), 0, 65535).astype(np.uint16)
    if fmt == "PNG":
        return png16(rgb, srgb_profile(), dpi, {k: str(v) for k, v in (metadata or {}).items()})
    return tiff16(rgb, srgb_profile(), dpi,
                  json.dumps(metadata, default=str) if metadata else None)


def save_image(img: Image.Image, path: str | os.PathLike, metadata: dict | None = None,
               **encoding) -> None:
    """Save atomically (:func:`encode_image`)."""
    write_bytes(path, encode_image(img, path, metadata, **encoding))
