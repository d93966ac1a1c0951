"""Average pooling's magnitude rescaling.

A 2×2 average is never larger than the maximum of the same window, so a VGG19 with average
pooling (Gatys et al. prefer it for its smoother gradients) has smaller activations after
every pool than the max-pool network the weights were trained with, and the loss — a square
(content) or fourth power (style) of them — shrinks several-fold at deep layers: the same
weights would mean a different picture. We scale each average pool's output, per channel, so
its second moment (what Gram matrices and the content MSE see) over natural images matches
the max pool's; pool by pool, since each factor changes
everything after it. The graph applies them as one ``Mul`` per pool (its gradient: the same
``Mul``).

The factors ship with the package (``avg_pool_scales.json``), measured by
``scripts/calibrate_pooling.py`` (which runs the sessions: this module builds and runs
nothing) on three public-domain pictures; the tests check them on two others
(``examples/``). A 1/f-noise image was tried as a file-free calibration and is far off at
pool4 (docs/design.md) — deep features need real pictures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..vgg19 import BLOCKS

SCALES_FILE = Path(__file__).with_name("avg_pool_scales.json")


def pre_pool_layers() -> list[str]:
    """The ReLU feeding each pool: relu1_2, relu2_2, relu3_4, relu4_4."""
    return [f"relu{b}_{n}" for b, n in enumerate(BLOCKS[:-1], start=1)]


def pooled_channel_sums(a: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
    """Per-channel sum of squares of the 2×2 pool of ``a`` (1, C, H, W), and the number of
    windows: second moments, as the Gram matrices and the content MSE see them."""
    c, h, w = a.shape[1:]
    v = a[0, :, : h // 2 * 2, : w // 2 * 2].astype(np.float64).reshape(c, h // 2, 2, w // 2, 2)
    p = v.max(axis=(2, 4)) if kind == "max" else v.mean(axis=(2, 4))
    return np.square(p).sum(axis=(1, 2)), p[0].size


def load_scales(path: Path = SCALES_FILE) -> tuple[dict[str, np.ndarray], dict]:
    """The shipped factors and what they were measured on."""
    data = json.loads(path.read_text())
    return {k: np.asarray(v, np.float32) for k, v in data["scales"].items()}, data["about"]
