"""Colour control (Gatys et al. 2016, "Preserving Color in Neural Artistic Style Transfer").

Pure numpy on float images (H, W, 3), RGB in [0, 255]:

* ``match_histogram``: recolour the style so its pixel mean and covariance equal the
  content's, by x ↦ A (x − μs) + μc with A Σs Aᵀ = Σc; A from Cholesky factors
  (``cholesky``) or from symmetric square roots (``symmetric``, the PCA variant, which
  rotates colours least);
* ``luminance`` / ``with_chroma``: YIQ split, for luminance-only transfer and for the quick
  post-hoc swap of the content's chroma into the result;
* ``match_luminance``: the style luminance's mean and variance set to the content's.
"""

from __future__ import annotations

import numpy as np

RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.596, -0.274, -0.322],
                       [0.211, -0.523, 0.312]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = x.reshape(-1, 3).astype(np.float64)
    return p.mean(axis=0), np.cov(p, rowvar=False) + 1e-5 * np.eye(3)


def _sqrtm(c: np.ndarray, inverse: bool = False) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    w = np.maximum(w, 1e-8)
    return (v * (w ** (-0.5 if inverse else 0.5))) @ v.T


def match_histogram(style: np.ndarray, content: np.ndarray, method: str = "cholesky") -> np.ndarray:
    """Style recoloured to the content's colour mean and covariance (clipped to [0, 255])."""
    mu_s, cov_s = _stats(style)
    mu_c, cov_c = _stats(content)
    if method == "cholesky":
        a = np.linalg.cholesky(cov_c) @ np.linalg.inv(np.linalg.cholesky(cov_s))
    elif method == "symmetric":
        a = _sqrtm(cov_c) @ _sqrtm(cov_s, inverse=True)
    else:
        raise ValueError(f"unknown method {method!r}")
    out = (style.reshape(-1, 3) - mu_s) @ a.T + mu_c
    return np.clip(out, 0, 255).reshape(style.shape)


def luminance(x: np.ndarray) -> np.ndarray:
    """Y of YIQ, (H, W)."""
    return x @ RGB_TO_YIQ[0]


def grey(y: np.ndarray) -> np.ndarray:
    """A luminance image as (H, W, 3) RGB (R = G = B = Y)."""
    return np.repeat(np.clip(y, 0, 255)[..., None], 3, axis=-1)


def match_luminance(style_y: np.ndarray, content_y: np.ndarray) -> np.ndarray:
    """Style luminance with the content's mean and standard deviation."""
    s = style_y.std() + 1e-8
    return (style_y - style_y.mean()) * (content_y.std() / s) + content_y.mean()


def with_chroma(y: np.ndarray, chroma_from: np.ndarray) -> np.ndarray:
    """Luminance ``y`` (H, W) with the I, Q of ``chroma_from`` (H, W, 3) → RGB in [0, 255]."""
    yiq = chroma_from @ RGB_TO_YIQ.T
    yiq[..., 0] = y
    return np.clip(yiq @ YIQ_TO_RGB.T, 0, 255)
