"""A clip made by moving a virtual camera over a photo (a pan and a slight zoom), so the
true motion between frames is known: what tests/test_video.py and scripts/bench_video.py
stylise, and what the warping error is measured with."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Camera:
    """Frame t sees the photo around ``centre + t·pan`` (fractions of the photo's size per
    frame) at ``scale·(1 − zoom)^t`` photo pixels per frame pixel (zoom > 0: closer)."""

    pan: tuple[float, float] = (0.006, 0.002)
    zoom: float = 0.004
    start: tuple[float, float] = (0.42, 0.5)
    cover: float = 0.62  # frame 0 shows this fraction of the photo's width

    def box(self, t: int, photo: tuple[int, int], frame: tuple[int, int]):
        """(centre x, centre y, photo px per frame px) of frame t."""
        pw, ph = photo
        s = self.cover * pw / frame[0] * (1 - self.zoom) ** t
        return (pw * (self.start[0] + t * self.pan[0]), ph * (self.start[1] + t * self.pan[1]), s)


def _to_photo(t: int, cam: Camera, photo, frame) -> tuple[np.ndarray, np.ndarray]:
    w, h = frame
    cx, cy, s = cam.box(t, photo, frame)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cx + (gx - w / 2) * s, cy + (gy - h / 2) * s


def camera_clip(photo: Image.Image, n: int, frame: tuple[int, int],
                cam: Camera = Camera()) -> list[np.ndarray]:
    """``n`` RGB uint8 frames of ``frame`` (W, H) px."""
    # the photo first brought to about one photo pixel per frame pixel (Lanczos), so that
    # the bilinear sampling below does not alias; the motion depends on its aspect only
    w = round(frame[0] / cam.cover)
    photo = photo.convert("RGB").resize((w, round(w * photo.size[1] / photo.size[0])),
                                        Image.LANCZOS)
    src = np.asarray(photo, np.float32)
    out = []
    for t in range(n):
        mx, my = _to_photo(t, cam, photo.size, frame)
        img = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return out


def true_flow(t: int, photo_size, frame: tuple[int, int], cam: Camera = Camera()) -> np.ndarray:
    """Flow (H, W, 2) from frame t to frame t − 1: where each pixel of t is in t − 1."""
    w, h = frame
    px, py = _to_photo(t, cam, photo_size, frame)
    cx, cy, s = cam.box(t - 1, photo_size, frame)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return np.stack([(px - cx) / s + w / 2 - gx, (py - cy) / s + h / 2 - gy], axis=-1)


def warping_error(frames: list[np.ndarray], photo_size, cam: Camera = Camera()) -> float:
    """Mean over consecutive pairs of the mean squared difference (RGB, 0..255) between
    frame t and frame t − 1 carried along the true motion, over pixels visible in both."""
    errs = []
    for t in range(1, len(frames)):
        h, w = frames[t].shape[:2]
        f = true_flow(t, photo_size, (w, h), cam)
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        x, y = gx + f[..., 0], gy + f[..., 1]
        seen = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        prev = cv2.remap(frames[t - 1].astype(np.float32), x, y, cv2.INTER_LINEAR)
        d = (frames[t].astype(np.float32) - prev) ** 2
        errs.append(float(d[seen].mean()))
    return float(np.mean(errs))
