"""Each gradient kernel alone, against numpy.

The linear ops (convolution, pooling) are checked against their adjoint written out in
numpy by definition — scatter each output's gradient back to the inputs it was computed
from — so the flip-and-transpose or nearest-upsampling tricks of the kernels are not
repeated here. The loss terms are checked against central differences of their numpy
definition in float64. Whole-graph checks are in test_gradients.py and test_real_weights.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernels import expect, run_kernel

from nst_onnx.graphs import ops
from nst_onnx.graphs.losses import (
    ContentLoss,
    GuidedStyleLoss,
    LayerApply,
    Scale,
    StyleLoss,
    TemporalLoss,
    TotalVariation,
)

RNG = np.random.default_rng(7)


def f32(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


# --------------------------------------------------------------------------- ReLU


def test_relu_grad():
    a = np.maximum(f32(1, 4, 5, 6), 0)
    grad = f32(1, 4, 5, 6)
    expect(lambda g, gr, m: ops.relu_grad(g, gr, ops.relu_mask(g, m)),
           {"grad": grad, "a": a}, [grad * (a > 0)])


# --------------------------------------------------------------------------- convolution


def conv_adjoint(gz: np.ndarray, w: np.ndarray) -> np.ndarray:
    """∂/∂x of Σ gz·conv3x3(x, w): each output pixel's gradient, times the weight that
    connected it, scattered to the 3×3 input window it read (pad 1, cut off again)."""
    _, o, h, wd = gz.shape
    out = np.zeros((w.shape[1], h + 2, wd + 2))
    for ky in range(3):
        for kx in range(3):
            out[:, ky:ky + h, kx:kx + wd] += np.einsum("oi,ohw->ihw", w[:, :, ky, kx], gz[0])
    return out[None, :, 1:-1, 1:-1]


def test_conv_input_grad_is_the_adjoint_of_conv():
    w, gz = f32(5, 3, 3, 3), f32(1, 5, 7, 9)
    expect(lambda g, gr, wt: ops.conv_input_grad(g, gr, wt, "conv"),
           {"gz": gz, "w": w}, [conv_adjoint(gz.astype(np.float64), w.astype(np.float64))],
           rtol=1e-4, atol=1e-5)


def test_conv_forward_matches_its_adjoint():
    """⟨conv(x), g⟩ = ⟨x, conv_input_grad(g)⟩: forward and kernel agree as a pair."""
    x, w, gz = f32(1, 3, 6, 7), f32(4, 3, 3, 3), f32(1, 4, 6, 7)
    b = np.zeros(4, np.float32)
    y, = run_kernel(lambda g, xi, wi, bi: ops.conv(g, xi, wi, bi, "c"), {"x": x, "w": w, "b": b})
    gx, = run_kernel(lambda g, gi, wi: ops.conv_input_grad(g, gi, wi, "c"), {"gz": gz, "w": w})
    assert np.sum(y * gz, dtype=np.float64) == pytest.approx(np.sum(x * gx, dtype=np.float64),
                                                             rel=1e-4)


# --------------------------------------------------------------------------- pooling


def maxpool_adjoint(x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Each window's gradient to the position of its maximum; floored-away edges get 0."""
    out = np.zeros_like(x)
    _, c, h, w = grad.shape
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                win = x[0, ch, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                di, dj = np.unravel_index(np.argmax(win), (2, 2))
                out[0, ch, 2 * i + di, 2 * j + dj] = grad[0, ch, i, j]
    return out


def with_ties(x: np.ndarray) -> np.ndarray:
    """Rectified, with exact ties: a third of the rows rounded (flat and clipped regions)."""
    x = np.maximum(x, 0)
    x[..., ::3, :] = np.round(x[..., ::3, :])
    return x


def _maxpool_grad(g, xi, gi):
    y = ops.maxpool(g, xi)
    return ops.maxpool_grad(g, gi, ops.spatial_shape(g, xi), ops.maxpool_winners(g, xi, y))


@pytest.mark.parametrize("hw", [(6, 8), (7, 9)])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_grad_routes_to_the_first_argmax(hw, ties):
    x = f32(1, 3, *hw)  # continuous random values: no ties unless made
    x = with_ties(x) if ties else x
    grad = f32(1, 3, hw[0] // 2, hw[1] // 2)
    expect(_maxpool_grad, {"x": x, "grad": grad}, [maxpool_adjoint(x, grad)])


def test_maxpool_grad_matches_the_indices_kernel():
    """Against the kernel it replaced (MaxPool's Indices + ScatterElements): the same winner
    in every window, ties included, on the shapes and magnitudes of a real layer."""
    x = with_ties(f32(1, 16, 37, 50) * 50)
    grad = f32(1, 16, 18, 25)

    def indices_kernel(g, xi, gi):
        _, idx = g.op("MaxPool", xi, outputs=2, **ops.POOL)
        flat = g.ints(-1)
        zeros = g.op("Mul", xi, g.const(0.0))
        scattered = g.op("ScatterElements", g.op("Reshape", zeros, flat),
                         g.op("Reshape", idx, flat), g.op("Reshape", gi, flat), axis=0)
        return g.op("Reshape", scattered, g.op("Shape", xi))
    want, = run_kernel(indices_kernel, {"x": x, "grad": grad}, portable=False)
    assert (x[..., ::3, :] == 0).mean() > 0.3  # ties at 0 and at integers are present
    expect(_maxpool_grad, {"x": x, "grad": grad}, [want], rtol=0, atol=0)


def avgpool_adjoint(shape, grad: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, np.float64)
    _, c, h, w = grad.shape
    for di in range(2):
        for dj in range(2):
            out[:, :, di:2 * h:2, dj:2 * w:2] += grad * scale / 4
    return out


@pytest.mark.parametrize("hw", [(6, 8), (7, 9)])
@pytest.mark.parametrize("scaled", [False, True])
def test_avgpool_grad_spreads_a_quarter(hw, scaled):
    x = f32(1, 3, *hw)
    grad = f32(1, 3, hw[0] // 2, hw[1] // 2)
    s = f32(1, 3, 1, 1, low=0.5, high=2.0) if scaled else np.ones((1, 3, 1, 1), np.float32)
    inputs = {"x": x, "grad": grad} | ({"s": s} if scaled else {})

    def build(g, xi, gi, si=None):
        return ops.avgpool_grad(g, gi, ops.spatial_shape(g, xi), si)
    expect(build, inputs, [avgpool_adjoint(x.shape, grad, s)])


def test_avgpool_forward_matches_its_adjoint():
    x, s = f32(1, 2, 7, 6), f32(1, 2, 1, 1, low=0.5, high=2.0)
    gy = f32(1, 2, 3, 3)
    y, = run_kernel(lambda g, xi, si: ops.avgpool(g, xi, si), {"x": x, "s": s})
    gx, = run_kernel(lambda g, xi, gi, si: ops.avgpool_grad(g, gi, ops.spatial_shape(g, xi), si),
                     {"x": x, "gy": gy, "s": s})
    assert np.sum(y * gy, dtype=np.float64) == pytest.approx(np.sum(x * gx, dtype=np.float64),
                                                             rel=1e-5)


# --------------------------------------------------------------------------- loss terms


def numeric_grad(fn, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of a float64 function, element by element."""
    x = x.astype(np.float64)
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        out[i] = (fn(x + d) - fn(x - d)) / (2 * eps)
    return out


def loss_and_grad(loss, f: np.ndarray, fixed: dict[str, np.ndarray], scale: float = 3.0):
    """Run ``loss`` on ``f`` and its gradient builder with a run-time ``scale``."""
    def build(g, fi, si, *_):
        value, grad = loss(g, fi)
        return value, grad(si)
    return run_kernel(build, {"f": f, "s": np.array(scale, np.float32), **fixed}, 2)


def gram64(f):
    fm = f.reshape(f.shape[1], -1)
    return fm @ fm.T / fm.size


def test_content_loss_and_grad():
    f, p = f32(1, 4, 3, 5), f32(1, 4, 3, 5)
    inv_n = np.array(1 / f.size, np.float32)
    value, grad = loss_and_grad(ContentLoss("p", "inv_n"), f, {"p": p, "inv_n": inv_n})

    def ref(x):
        return np.mean((x - p) ** 2)
    assert value == pytest.approx(ref(f.astype(np.float64)), rel=1e-5)
    np.testing.assert_allclose(grad, 3.0 * numeric_grad(ref, f), rtol=1e-4, atol=1e-6)


def symmetric(*shape):
    """A style target is a Gram matrix: symmetric (the kernels' closed forms rely on it)."""
    a = f32(*shape)
    return (a + np.swapaxes(a, -1, -2)) / 2


def test_style_loss_and_grad():
    f, a = f32(1, 4, 3, 5, low=0, high=2), symmetric(4, 4)
    inv_n = np.array(1 / f.size, np.float32)
    value, grad = loss_and_grad(StyleLoss("a", "inv_n", 4), f, {"a": a, "inv_n": inv_n})

    def ref(x):
        return np.mean((gram64(x) - a) ** 2)
    assert value == pytest.approx(ref(f.astype(np.float64)), rel=1e-5)
    np.testing.assert_allclose(grad, 3.0 * numeric_grad(ref, f), rtol=1e-4, atol=1e-6)


def test_guided_style_loss_and_grad():
    f, a = f32(1, 3, 4, 5, low=0, high=2), symmetric(2, 3, 3)
    guide = f32(2, 1, 4, 5, low=0, high=1)
    value, grad = loss_and_grad(GuidedStyleLoss("a", "t", 3), f, {"a": a, "t": guide})

    def ref(x):
        out = 0.0
        for r in range(2):
            fr = (x[0] * guide[r]).reshape(3, -1)
            gr = fr @ fr.T / (3 * np.sum(guide[r].astype(np.float64) ** 2))
            out += np.mean((gr - a[r]) ** 2) / 2
        return out
    assert value == pytest.approx(ref(f.astype(np.float64)), rel=1e-5)
    np.testing.assert_allclose(grad, 3.0 * numeric_grad(ref, f), rtol=1e-4, atol=1e-6)


def test_total_variation_and_grad():
    x = f32(1, 3, 4, 6, low=0, high=255)
    value, grad = loss_and_grad(TotalVariation(), x, {})

    def ref(z):
        return 0.5 * (np.sum(np.diff(z, axis=2) ** 2) + np.sum(np.diff(z, axis=3) ** 2))
    assert value == pytest.approx(ref(x.astype(np.float64)), rel=1e-5)
    np.testing.assert_allclose(grad, 3.0 * numeric_grad(ref, x, eps=1e-3), rtol=1e-4, atol=1e-3)


def test_temporal_loss_and_grad():
    """Ruder et al.'s term alone: Σ c⊙(x − ω)²/D against numpy, c broadcast over the
    channels, with soft (blurred) reliabilities and zeros where the flow is not trusted."""
    x, warped = f32(1, 3, 4, 5, low=0, high=255), f32(1, 3, 4, 5, low=0, high=255)
    c = f32(1, 1, 4, 5, low=0, high=1)
    c[0, 0, 1:3, 2] = 0.0
    inv_d = np.array(1 / x.size, np.float32)
    value, grad = loss_and_grad(TemporalLoss("w", "c", "inv_d"), x,
                                {"w": warped, "c": c, "inv_d": inv_d})

    def ref(z):
        return np.sum(c * (z - warped) ** 2) / z.size
    assert value == pytest.approx(ref(x.astype(np.float64)), rel=1e-5)
    np.testing.assert_allclose(grad, 3.0 * numeric_grad(ref, x, eps=1e-3), rtol=1e-4, atol=1e-4)
    assert np.all(grad[..., 1:3, 2] == 0)  # no pull where the flow is unreliable


def test_layer_apply_routes_the_loss_to_its_layer():
    """LayerApply alone: the loss of the named activation, its gradient returned under that
    name (and only that one), the backward's scale passed through."""
    f, p = f32(1, 2, 3, 4), f32(1, 2, 3, 4)
    inv_n = np.array(1 / f.size, np.float32)

    def build(g, fi, _, pi, ni, si):
        value, grads = LayerApply(ContentLoss(pi, ni), "relu4_2")(g, {"relu4_2": fi, "x": _})
        assert [layer for layer, _ in grads] == ["relu4_2"]
        return value, grads[0][1](si)
    value, grad = run_kernel(build, {"f": f, "other": f32(1, 2, 3, 4), "p": p, "inv_n": inv_n,
                                     "s": np.array(2.0, np.float32)}, 2)
    assert value == pytest.approx(np.mean((f.astype(np.float64) - p) ** 2), rel=1e-5)
    np.testing.assert_allclose(grad, 2.0 * 2 * (f - p) / f.size, rtol=1e-5, atol=1e-7)


def test_scale_weights_the_loss_and_every_gradient():
    """Scale alone: w·loss, and w·(the backward's scale)·∂loss/∂f — with no scale from the
    backward (None), w itself."""
    f, p = f32(1, 2, 3, 4), f32(1, 2, 3, 4)
    inv_n = np.array(1 / f.size, np.float32)
    for outer in (None, 3.0):
        def build(g, fi, pi, ni, wi, *si):
            value, grads = Scale(LayerApply(ContentLoss(pi, ni), "a"), wi)(g, {"a": fi})
            return value, grads[0][1](si[0] if si else None)
        feeds = {"f": f, "p": p, "inv_n": inv_n, "w": np.array(0.5, np.float32)}
        if outer is not None:
            feeds["s"] = np.array(outer, np.float32)
        value, grad = run_kernel(build, feeds, 2)
        assert value == pytest.approx(0.5 * np.mean((f.astype(np.float64) - p) ** 2), rel=1e-5)
        np.testing.assert_allclose(grad, 0.5 * (outer or 1.0) * 2 * (f - p) / f.size,
                                   rtol=1e-5, atol=1e-7)
