"""Image I/O: load (orientation, colour mode, alpha), resize, convert, save atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .atomic import atomic_path
from .errors import BadInput

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
           ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}

ImageLike = "str | os.PathLike | Image.Image | np.ndarray"


def load_image(src, what: str = "image") -> Image.Image:
    """Path, PIL image or uint8 array → RGB PIL image, EXIF orientation applied.

    Transparent images are composited over white (what a viewer shows).
    """
    if isinstance(src, np.ndarray):
        arr = src
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise BadInput(f"{what}: array of shape {arr.shape}; expected (H, W, 3) uint8")
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif isinstance(src, Image.Image):
        img = src
    else:
        path = Path(src)
        if not path.is_file():
            raise BadInput(f"{what} not found: {path}")
        try:
            img = Image.open(path)
            img.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise BadInput(f"{what} {path} is not a readable image ({e})") from None
        except Image.DecompressionBombError as e:
            raise BadInput(f"{what} {path} is too large to decode safely ({e})") from None
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def fit_longest_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (Lanczos) so the longest side is ``size``; the aspect ratio is kept."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if new == img.size else img.resize(new, Image.LANCZOS)


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


def save_image(img: Image.Image, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save atomically, format from the extension; PNG carries ``metadata`` as text chunks."""
    fmt = output_format(path)
    kwargs = {}
    if fmt == "PNG" and metadata:
        info = PngImagePlugin.PngInfo()
        for k, v in metadata.items():
            info.add_itxt(k, str(v))
        kwargs["pnginfo"] = info
    elif fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = 95
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **kwargs)
