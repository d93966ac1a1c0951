"""VGG19's forward ops, each next to its gradient kernel (the backward pass as ONNX ops).

Every function appends nodes to a :class:`~nst_onnx.graphs.builder.GraphBuilder` and
returns tensor names. The math of each kernel is in docs/design.md; each is tested alone
against numpy in tests/test_kernels.py.
"""

from __future__ import annotations

import numpy as np

from ..vgg19 import MEAN_BGR
from .builder import FLOAT, GraphBuilder

POOL = dict(kernel_shape=[2, 2], strides=[2, 2])


# --------------------------------------------------------------------------- preprocessing


def center(g: GraphBuilder, image: str) -> str:
    """RGB in [0, 255] minus the Caffe mean (the RGB→BGR flip is folded into conv1_1's
    weights). Its gradient is the identity: nothing to build."""
    mean_rgb = np.array(MEAN_BGR[::-1], np.float32).reshape(1, 3, 1, 1)
    return g.op("Sub", image, g.const(mean_rgb, "mean_rgb"), hint="centered")


# --------------------------------------------------------------------------- ReLU


def relu(g: GraphBuilder, z: str, name: str) -> str:
    return g.op("Relu", z, outputs=[name])


def relu_mask(g: GraphBuilder, a: str, hint: str = "relu_mask") -> str:
    """What the backward pass keeps of a ReLU: ``a > 0`` as bool (1 byte per element)."""
    return g.op("Greater", a, g.const(0.0), hint=hint)


def relu_grad(g: GraphBuilder, grad: str, mask: str) -> str:
    """``g · (a > 0)``. Mul by the mask's float cast beats Where 3×."""
    return g.op("Mul", grad, g.op("Cast", mask, to=FLOAT), hint="g_z")


# --------------------------------------------------------------------------- 3×3 convolution


def conv(g: GraphBuilder, x: str, weight: str, bias: str, name: str) -> str:
    return g.op("Conv", x, weight, bias, kernel_shape=[3, 3], pads=[1, 1, 1, 1], hint=name)


def conv_input_grad(g: GraphBuilder, gz: str, weight: str, name: str) -> str:
    """∂/∂input of a 3×3, pad-1 conv: a plain Conv of ``gz`` with ``W'[i,o] = W[o,i]``
    rotated 180°, derived in-graph from the one stored weight (onnxruntime folds it at
    session start). Faster and smaller than ConvTranspose on the CPU (docs/design.md)."""
    wt = g.op("Transpose", weight, perm=[1, 0, 2, 3])
    wf = g.op("Slice", wt, g.ints(-1, -1), g.ints(*[np.iinfo(np.int64).min] * 2), g.ints(2, 3),
              g.ints(-1, -1), hint=f"{name}.weight_flipT")
    return g.op("Conv", gz, wf, kernel_shape=[3, 3], pads=[1, 1, 1, 1], hint=f"g_in_{name}")


# --------------------------------------------------------------------------- 2×2 max pool


def maxpool(g: GraphBuilder, x: str) -> str:
    """2×2, stride 2 (odd edges floored away). One output: no Indices, which WebGPU and
    TensorRT do not produce and which keeps onnxruntime's CPU off its blocked-layout path."""
    return g.op("MaxPool", x, hint="pool", **POOL)


def maxpool_winners(g: GraphBuilder, x: str, y: str) -> str:
    """Each window's first arg-max (row-major, as MaxPool's own Indices), as a bool mask of
    the pooled part of ``x`` (2·⌊H/2⌋ × 2·⌊W/2⌋; 1 byte an element, where Indices were 2).

    The candidates are where ``x`` equals its window's maximum (``y`` upsampled). A tie (a
    flat region clipped at 0 or 255 makes exact ones) must still give one winner: each
    candidate scores its place's priority (4 3 / 2 1), a second max pool picks the highest,
    so the first wins. Ties at 0 after a ReLU would carry zero gradient anyway."""
    up = _upsample(g, y)
    pooled = g.op("Slice", x, g.ints(0, 0), spatial_shape(g, up), g.ints(2, 3),
                  hint="pooled_part")
    candidate = g.op("Cast", g.op("Equal", pooled, up), to=FLOAT)
    one_channel = g.op("Slice", y, g.ints(0), g.ints(1), g.ints(1))  # (1, 1, h, w): its shape
    priority = g.op("Tile", g.const(np.array([[[[4, 3], [2, 1]]]], np.float32)),
                    g.op("Shape", one_channel))  # is the Tile's repeats, no size arithmetic
    score = g.op("Mul", candidate, priority, hint="winner_score")
    return g.op("Equal", score, _upsample(g, g.op("MaxPool", score, **POOL)), hint="winner")


def maxpool_grad(g: GraphBuilder, grad: str, x_hw: str, winners: str) -> str:
    """Each window's gradient to its winner (:func:`maxpool_winners`); everything else, the
    floored-away edges included, is zero: upsample, keep the winner, pad to (H, W)."""
    routed = g.op("Mul", _upsample(g, grad), g.op("Cast", winners, to=FLOAT))
    return _pad_to(g, routed, x_hw, hint="g_pool")


def _upsample(g: GraphBuilder, t: str) -> str:
    return g.op("Resize", t, "", g.const(np.array([1, 1, 2, 2], np.float32)), mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _pad_to(g: GraphBuilder, t: str, x_hw: str, hint: str) -> str:
    """A 2·⌊H/2⌋ × 2·⌊W/2⌋ tensor brought to (H, W) with zeros: padded by one row and
    column, then cut — without size arithmetic in the graph."""
    padded = g.op("Pad", t, g.ints(0, 0, 0, 0, 0, 0, 1, 1))
    return g.op("Slice", padded, g.ints(0, 0), x_hw, g.ints(2, 3), hint=hint)


# --------------------------------------------------------------------------- 2×2 average pool


def avgpool(g: GraphBuilder, x: str, scale: str | None = None) -> str:
    """2×2 mean, optionally times a per-channel ``scale`` (1, C, 1, 1): average pooling's
    magnitude rescaling (:mod:`nst_onnx.graphs.calibrate`)."""
    y = g.op("AveragePool", x, hint="pool", **POOL)
    return y if scale is None else g.op("Mul", y, scale, hint="pool_scaled")


def avgpool_grad(g: GraphBuilder, grad: str, x_hw: str, scale: str | None = None) -> str:
    """``(scale·g)/4`` copied to each window's four pixels; floored-away edges get zero.

    ``x_hw``: the pool input's (H, W). The upsampled gradient is 2·⌊H/2⌋ × 2·⌊W/2⌋; padded by
    one row and column and cut to (H, W), without size arithmetic in the graph."""
    if scale is not None:
        grad = g.op("Mul", grad, scale)
    return _pad_to(g, _upsample(g, g.op("Mul", grad, g.const(0.25))), x_hw, hint="g_pool")


def spatial_shape(g: GraphBuilder, x: str) -> str:
    """(H, W) of an NCHW tensor, as int64 (Shape with start=2: no Slice of a shape)."""
    return g.op("Shape", x, start=2, hint="hw")
