"""An independent float64 numpy reference of the forward loss (no ONNX, no graph code).

Direct convolution via sliding windows, explicit BGR flip and mean, plain pooling; the
loss definitions as written in DESIGN.md. Finite differences of this give the gradients
the graph must match.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MEAN_BGR = np.array([103.939, 116.779, 123.68])
BLOCKS = (2, 2, 4, 4, 4)


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (C, H, W), w (O, C, 3, 3) → (O, H, W); zero padding 1, cross-correlation."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (3, 3), axis=(1, 2))  # C, H, W, 3, 3
    return np.einsum("chwij,ocij->ohw", win, w, optimize=True) + b[:, None, None]


def pool(x: np.ndarray, kind: str) -> np.ndarray:
    c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    v = x[:, : 2 * h2, : 2 * w2].reshape(c, h2, 2, w2, 2)
    return v.max(axis=(2, 4)) if kind == "max" else v.mean(axis=(2, 4))


def features(image_rgb: np.ndarray, weights: dict, layers: list[str], pooling: str,
             pool_scales: dict | None = None) -> dict:
    """image (3, H, W) RGB 0..255 → {relu name: (C, h, w)} for the requested layers.
    ``pool_scales``: {'pool1': (C,) …} multiplies each average pool's output per channel."""
    x = image_rgb[::-1].astype(np.float64) - MEAN_BGR[:, None, None]
    out, deepest = {}, max(_order(n) for n in layers)
    for bi, n in enumerate(BLOCKS, start=1):
        if bi > 1:
            x = pool(x, pooling)
            if pooling == "avg" and pool_scales and f"pool{bi - 1}" in pool_scales:
                x = x * np.asarray(pool_scales[f"pool{bi - 1}"], np.float64)[:, None, None]
        for ci in range(1, n + 1):
            name = f"{bi}_{ci}"
            if _order("relu" + name) > deepest:
                return out
            w, b = weights[f"conv{name}"]
            x = np.maximum(conv3x3(x, w.astype(np.float64), b.astype(np.float64)), 0)
            if "relu" + name in layers:
                out["relu" + name] = x
    return out


def _order(name: str) -> int:
    b, c = name[4:].split("_")
    return int(b) * 10 + int(c)


def gram(f: np.ndarray) -> np.ndarray:
    fm = f.reshape(f.shape[0], -1)
    return fm @ fm.T / fm.size


def loss(image_rgb, weights, content_layers, style_layers, pooling,
         content_targets, gram_targets, wc, ws, wtv, pool_scales=None, guides=None) -> float:
    """``guides`` (R, H, W): guided Grams per region, ``gram_targets[n]`` then (R, C, C)."""
    feats = features(image_rgb, weights, list(content_layers) + list(style_layers), pooling,
                     pool_scales)
    total = 0.0
    for i, n in enumerate(content_layers):
        total += wc[i] * np.mean((feats[n] - content_targets[n]) ** 2)
    for i, n in enumerate(style_layers):
        f = feats[n]
        if guides is None:
            total += ws[i] * np.mean((gram(f) - gram_targets[n]) ** 2)
            continue
        t = guides.astype(np.float64)
        for _ in range(int(n[4]) - 1):  # the guide follows the features' 2×2 poolings
            t = np.stack([pool(m[None], "avg")[0] for m in t])
        grams = []
        for m in t:
            fr = (f * m).reshape(f.shape[0], -1)
            grams.append(fr @ fr.T / (f.shape[0] * np.sum(m ** 2)))
        total += ws[i] * np.mean((np.stack(grams) - gram_targets[n]) ** 2)
    x = image_rgb.astype(np.float64)
    total += wtv * 0.5 * (np.sum(np.diff(x, axis=1) ** 2) + np.sum(np.diff(x, axis=2) ** 2))
    return float(total)


def problem_loss(problem, weights, spec):
    """The float64 reference loss of an nst_onnx problem: its targets and weights, the
    network from the dense real weights."""
    fixed = problem.evaluator.fixed
    dense = {k: (v.weight, v.b) for k, v in weights.layers.items()}
    ct = {n: fixed[f"target_{n}"][0].astype(np.float64) for n in spec.content_layers}
    gt = {n: fixed[f"target_gram_{n}"].astype(np.float64) for n in spec.style_layers}

    def loss_at(z):
        return loss(z, dense, spec.content_layers, spec.style_layers, spec.pooling, ct, gt,
                    fixed["content_weights"], fixed["style_weights"], float(fixed["tv_weight"]))
    return loss_at
