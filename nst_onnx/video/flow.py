"""Optical flow between frames, where it can be trusted, and the previous result carried
along it (Ruder, Dosovitskiy & Brox 2016; thresholds of their consistencyChecker).

Flows are OpenCV's DIS on the content frames at the working size, both directions per pair,
computed once and kept in a cache folder (atomic ``.npz`` files, keyed by the two frames'
pixels and the preset), so a resumed run does not compute them again.

Conventions: ``flow[y, x] = (dx, dy)`` takes a pixel of frame *a* to where it is in frame
*b* (``a(p) ≈ b(p + flow(p))``); to carry an image of *b* into *a*, sample it at
``p + flow_ab(p)``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.atomic import write_bytes
from .frames import cv2

BLUR_SIGMA = 1.0  # px: the light blur of the 0/1 reliability (Ruder et al. smooth theirs)


def dis_flow(a: np.ndarray, b: np.ndarray, preset: str) -> np.ndarray:
    """Flow from RGB uint8 frame ``a`` to ``b`` (H, W, 2) float32, OpenCV's DIS."""
    cv = cv2()
    dis = cv.DISOpticalFlow_create(getattr(cv, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
    grey = [cv.cvtColor(np.ascontiguousarray(x), cv.COLOR_RGB2GRAY) for x in (a, b)]
    return dis.calc(grey[0], grey[1], None)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` (H, W[, C]) float32 sampled at p + flow(p), bilinear, edges clamped."""
    cv = cv2()
    gx, gy = _grid(*flow.shape[:2])
    return cv.remap(np.ascontiguousarray(image, np.float32), gx + flow[..., 0],
                    gy + flow[..., 1], cv.INTER_LINEAR, borderMode=cv.BORDER_REPLICATE)


def reliability(flow: np.ndarray, back: np.ndarray) -> np.ndarray:
    """1 where ``flow`` (a → b) is trusted, 0 where it is not (H, W) float32, unblurred:
    disoccluded (the way back ``back`` (b → a), taken at p + flow(p), does not return:
    ``|w + ŵ|² ≥ 0.01·(|w|² + |ŵ|²) + 0.5``), on a motion boundary
    (``|∇u|² + |∇v|² > 0.01·|w|² + 0.002``), or carried outside frame b."""
    h, w = flow.shape[:2]
    back_at = sample(back, flow)
    w2 = np.sum(flow ** 2, axis=-1)
    disoccluded = np.sum((flow + back_at) ** 2, axis=-1) >= \
        0.01 * (w2 + np.sum(back_at ** 2, axis=-1)) + 0.5
    du_y, du_x = np.gradient(flow[..., 0])
    dv_y, dv_x = np.gradient(flow[..., 1])
    boundary = du_x ** 2 + du_y ** 2 + dv_x ** 2 + dv_y ** 2 > 0.01 * w2 + 0.002
    gx, gy = _grid(h, w)
    x, y = gx + flow[..., 0], gy + flow[..., 1]
    outside = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
    return (~(disoccluded | boundary | outside)).astype(np.float32)


def blurred(mask: np.ndarray) -> np.ndarray:
    cv = cv2()
    return cv.GaussianBlur(mask, (0, 0), BLUR_SIGMA, borderType=cv.BORDER_REPLICATE)


@dataclass
class FlowCache:
    """Both flows of a pair of frames, computed once per (pixels, preset) and kept as
    ``<folder>/<a>-<b>.npz``."""

    folder: Path
    preset: str

    def pair(self, i: int, a: np.ndarray, j: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow a → b, flow b → a) of frames ``i`` (pixels ``a``) and ``j`` (``b``)."""
        key = hashlib.sha256(self.preset.encode() + f"{a.shape}".encode() + a.tobytes()
                             + b.tobytes()).hexdigest()
        path = self.folder / f"{i:06d}-{j:06d}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["forward"], z["backward"]
        except (OSError, ValueError, KeyError):
            pass  # missing, torn or stale: compute it
        forward, backward = dis_flow(a, b, self.preset), dis_flow(b, a, self.preset)
        buf = io.BytesIO()
        np.savez(buf, key=np.asarray(key), forward=forward, backward=backward)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buf.getvalue())
        return forward, backward


@dataclass
class Carried:
    """The previous results carried into this frame: ω, its reliability c (blurred, the
    temporal term's weight per pixel) and the disocclusion mask that fills the start."""

    warped: np.ndarray  # (H, W, 3) float32
    reliability: np.ndarray  # (H, W) float32 in [0, 1]
    trusted: np.ndarray  # (H, W) bool: where ω starts the frame (else the content)


def carry(content: np.ndarray, earlier: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
          ) -> Carried:
    """``earlier``: (flow this → that frame, flow back, that frame's result) for the frames
    looked back to, closest first. Long-term (Ruder et al.): each farther frame counts only
    where the closer ones do not (its mask minus theirs, at 0 at least); the terms
    ``Σ_j c_j⊙(x − ω_j)²`` then have the gradient of one ``c⊙(x − ω)²`` with ``c = Σ c_j``
    and ``ω`` their c-weighted mean — the single pair the graph takes."""
    h, w = content.shape[:2]
    taken = np.zeros((h, w), np.float32)
    weighted = np.zeros((h, w, 3), np.float32)
    first_warp, trusted = None, np.zeros((h, w), bool)
    for flow, back, result in earlier:
        hard = reliability(flow, back)
        warp = sample(result.astype(np.float32), flow)
        first_warp = warp if first_warp is None else first_warp
        trusted |= hard > 0
        c = np.maximum(blurred(hard) - taken, 0.0)
        weighted += c[..., None] * warp
        taken += c
    warped = np.where(taken[..., None] > 1e-6, weighted / np.maximum(taken, 1e-6)[..., None],
                      first_warp)
    return Carried(warped.astype(np.float32), np.clip(taken, 0.0, 1.0), trusted)


def start_image(content: np.ndarray, carried: Carried) -> np.ndarray:
    """The frame's starting image (H, W, 3) uint8: ω where some earlier frame is seen, the
    content frame where every one is disoccluded."""
    out = np.where(carried.trusted[..., None], carried.warped, content.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
