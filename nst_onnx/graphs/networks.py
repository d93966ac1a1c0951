"""The two exported graphs, built by pure functions from weights and a :class:`LossSpec`:

* features: image → the content layers' activations and the style layers' Gram matrices;
* loss: image + targets + weights → loss, ∂loss/∂image and each term.

The forward walk records a *tape* (what each layer's gradient kernel needs); the loss terms
(:mod:`.losses`) attach their gradients at the layers they tap; the backward walk runs the
tape in reverse through the kernels of :mod:`.ops`, adding each tap's gradient on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..config import LossSpec
from ..vgg19 import Conv, channels, convs_up_to, downsampling, pool_before
from . import ops
from .builder import GraphBuilder
from .interface import (
    features_io,
    loss_io,
    sized_layers,
    term_name,
    window_features_io,
    window_loss_io,
)
from .losses import (
    ContentLoss,
    GradFn,
    GuidedStyleGradient,
    GuidedStyleLoss,
    LayerApply,
    Scale,
    StyleGradient,
    StyleLoss,
    TemporalLoss,
    TotalVariation,
    owned_gram,
    owned_guided_gram,
)
from .weights import LayerWeights, Weights

PoolScales = Mapping[str, np.ndarray]  # 'pool1' … 'pool4' → per-channel factor


def _weight_tensor(g: GraphBuilder, conv: Conv, lw: LayerWeights) -> str:
    """Store the weight once (uint8 codes + table when quantised) and return the dense name.

    For ``conv1_1`` the input channels are reversed: that folds the RGB→BGR flip in.
    """
    flip = conv.name == "conv1_1"
    if lw.codes is not None:
        codes = lw.codes[:, ::-1] if flip else lw.codes
        c = g.const(np.ascontiguousarray(codes), f"{conv.name}.codes")
        t = g.const(lw.table, f"{conv.name}.table")
        idx = g.op("Cast", c, to=TensorProto.INT32)
        return g.op("Gather", t, idx, axis=0, outputs=[f"{conv.name}.weight"])
    w = lw.w[:, ::-1] if flip else lw.w
    return g.const(np.ascontiguousarray(w, dtype=np.float32), f"{conv.name}.weight")


@dataclass
class _Tape:
    """What the backward pass needs from the forward pass, per convolution.

    Only small things are kept: boolean ReLU masks (1 byte per element) rather than the
    float activations, the pool input's (H, W) rather than the tensor, and max-pool winners.
    """

    conv: Conv
    weight: str
    mask: str | None = None  # a > 0 (bool); None where a max pool's mask stands in for it
    pool: str | None = None  # the pool before this conv: "max" | "avg"
    pool_hw: str | None = None  # (H, W) of the pool's input
    pool_winners: str | None = None  # max pool: each window's arg-max (bool)
    pool_mask: str | None = None  # max pool output > 0 (bool)
    pool_scale: str | None = None  # average pool's magnitude factor (1, C, 1, 1)


def _forward(g: GraphBuilder, weights: Weights, spec: LossSpec, need_backward: bool,
             pool_scales: PoolScales | None = None) -> tuple[dict[str, str], list[_Tape]]:
    """VGG19 up to the deepest chosen layer; returns {'image', 'relu1_1', …} and the tape."""
    acts = {"image": "image"}
    h = ops.center(g, "image")
    tape: list[_Tape] = []
    convs = convs_up_to(list(spec.all_layers))
    for i, conv in enumerate(convs):
        t = _Tape(conv, _weight_tensor(g, conv, weights.layers[conv.name]))
        pool = pool_before(conv)
        if pool:
            t.pool = spec.pooling
            if need_backward:
                t.pool_hw = ops.spatial_shape(g, h)
            if spec.pooling == "avg":
                factor = (pool_scales or {}).get(pool)
                if factor is not None:  # see nst_onnx.graphs.calibrate
                    t.pool_scale = g.const(np.asarray(factor, np.float32).reshape(1, -1, 1, 1))
                h = ops.avgpool(g, h, t.pool_scale)
            else:
                x, h = h, ops.maxpool(g, h)
                if need_backward:
                    t.pool_winners = ops.maxpool_winners(g, x, h)
                if need_backward and tape[-1].mask is None:
                    # the winner of each window is > 0 exactly when the ReLU before it passed
                    # gradient: this quarter-size mask replaces that ReLU's full-size one
                    t.pool_mask = ops.relu_mask(g, h, hint="pool_mask")
        b = g.const(weights.layers[conv.name].b, f"{conv.name}.bias")
        a = ops.relu(g, ops.conv(g, h, t.weight, b, conv.name), conv.relu)
        # a ReLU whose only way to the loss is a max pool needs no full-size mask (see above)
        only_via_maxpool = (spec.pooling == "max" and i + 1 < len(convs)
                            and pool_before(convs[i + 1]) and conv.relu not in spec.all_layers)
        if need_backward and not only_via_maxpool:
            t.mask = ops.relu_mask(g, a, hint=f"{conv.relu}_mask")
        tape.append(t)
        acts[conv.relu] = h = a
    return acts, tape


def _backward(g: GraphBuilder, tape: list[_Tape], taps: dict[str, list[GradFn]]) -> str:
    """Walk the tape from the deepest layer back to the image, adding taps on the way.

    Each tap's gradient is built only when the walk reaches its layer: nodes run in index
    order, so built earlier it would be computed during the forward pass and held through
    all of it (~130 MB at 512²)."""
    grad: str | None = None

    def add_taps(layer: str) -> None:
        nonlocal grad
        built = [build(None) for build in taps.get(layer, [])]
        if built:
            grad = g.add(*([grad] if grad else []) + built, hint=f"g_{layer}")

    for t in reversed(tape):
        add_taps(t.conv.relu)
        if grad is None:
            continue
        if t.mask is not None:
            grad = ops.relu_grad(g, grad, t.mask)
        grad = ops.conv_input_grad(g, grad, t.weight, t.conv.name)
        if t.pool == "max":
            if t.pool_mask is not None:
                grad = ops.relu_grad(g, grad, t.pool_mask)
            grad = ops.maxpool_grad(g, grad, t.pool_hw, t.pool_winners)
        elif t.pool == "avg":
            grad = ops.avgpool_grad(g, grad, t.pool_hw, t.pool_scale)
    add_taps("image")
    return grad


def _guides_per_layer(g: GraphBuilder, spec: LossSpec) -> dict[str, str]:
    """The ``guides`` input (R, 1, H, W) brought to each style layer's size by the same 2×2
    average pools the features went through (floored like them)."""
    out, t, level = {}, "guides", 0
    for layer in sorted(spec.style_layers, key=downsampling):
        while level < downsampling(layer):
            t = ops.avgpool(g, t)
            level += 1
        out[layer] = t
    return out


def loss_terms(g: GraphBuilder, spec: LossSpec,
               temporal: bool = False) -> list[tuple[str, object]]:
    """(output name, term) for every loss term of ``spec`` (and the video's temporal term),
    weights from the graph inputs."""
    inv_n = {n: g.scalar_at("inv_sizes", i) for i, n in enumerate(sized_layers(spec))}
    guides = _guides_per_layer(g, spec) if spec.guided else {}
    terms = []
    for i, n in enumerate(spec.content_layers):
        terms.append((term_name("content", n), Scale(
            LayerApply(ContentLoss(f"target_{n}", inv_n[n]), n),
            g.scalar_at("content_weights", i))))
    for i, n in enumerate(spec.style_layers):
        loss = (GuidedStyleLoss(f"target_gram_{n}", guides[n], channels(n)) if spec.guided
                else StyleLoss(f"target_gram_{n}", inv_n[n], channels(n)))
        terms.append((term_name("style", n),
                      Scale(LayerApply(loss, n), g.scalar_at("style_weights", i))))
    terms.append((term_name("tv"), Scale(LayerApply(TotalVariation(), "image"), "tv_weight")))
    if temporal:
        terms.append((term_name("temporal"), Scale(LayerApply(
            TemporalLoss("warped", "reliability", "inv_pixels"), "image"), "temporal_weight")))
    return terms


def build_features_graph(weights: Weights, spec: LossSpec,
                         pool_scales: PoolScales | None = None) -> onnx.ModelProto:
    """image → the content layers' features and the style layers' Gram matrices.

    ``pool_scales``: average pooling's per-channel factors (see :mod:`.calibrate`).
    """
    from .losses import gram

    g = GraphBuilder()
    acts, _ = _forward(g, weights, spec, need_backward=False, pool_scales=pool_scales)
    for n in spec.content_layers:
        g.op("Identity", acts[n], outputs=[f"features_{n}"])
    for n in spec.style_layers:
        # C·h·w as a float from the shape (Size has no WebGPU kernel and would copy the
        # activation to the host there)
        size = g.op("ReduceProd", g.op("Cast", g.op("Shape", acts[n]), to=TensorProto.FLOAT),
                    keepdims=0)
        gm, _ = gram(g, acts[n], channels(n), g.op("Reciprocal", size))
        g.op("Identity", gm, outputs=[f"gram_{n}"])
    return g.finish(features_io(spec))


def build_loss_graph(weights: Weights, spec: LossSpec, pool_scales: PoolScales | None = None,
                     temporal: bool = False) -> onnx.ModelProto:
    """image + targets + run-time weights → loss, ∂loss/∂image, and every term;
    ``temporal``: the video's twin (:func:`~.interface.loss_io`)."""
    g = GraphBuilder()
    acts, tape = _forward(g, weights, spec, need_backward=True, pool_scales=pool_scales)
    taps: dict[str, list[GradFn]] = {}
    values = []
    for name, term in loss_terms(g, spec, temporal):
        value, grads = term(g, acts)
        values.append(g.op("Identity", value, outputs=[name]))
        for layer, build in grads:
            taps.setdefault(layer, []).append(build)
    g.add(*values, outputs=["loss"])
    g.op("Identity", _backward(g, tape, taps), outputs=["grad"])
    return g.finish(loss_io(spec, temporal))


def build_temporal_loss_graph(weights: Weights, spec: LossSpec,
                              pool_scales: PoolScales | None = None) -> onnx.ModelProto:
    return build_loss_graph(weights, spec, pool_scales, temporal=True)


def _owned(layer: str) -> tuple[str, str]:
    d = downsampling(layer) if layer != "image" else 0
    return f"owned_rows_{d}", f"owned_cols_{d}"


def window_terms(g: GraphBuilder, spec: LossSpec) -> list[tuple[str | None, object]]:
    """The terms of :func:`loss_terms` for one window of a tiled evaluation: over its owned
    positions, sizes and ``G − A`` the whole image's (style values are the host's: None)."""
    inv_n = {n: g.scalar_at("inv_sizes", i) for i, n in enumerate(sized_layers(spec))}
    terms: list[tuple[str | None, object]] = []
    for i, n in enumerate(spec.content_layers):
        terms.append((term_name("content", n), Scale(
            LayerApply(ContentLoss(f"target_{n}", inv_n[n], _owned(n)), n),
            g.scalar_at("content_weights", i))))
    guides = _guides_per_layer(g, spec) if spec.guided else {}
    for i, n in enumerate(spec.style_layers):
        grad = (GuidedStyleGradient(f"gram_diff_{n}", guides[n], f"inv_energy_{n}",
                                    channels(n), _owned(n)) if spec.guided else
                StyleGradient(f"gram_diff_{n}", inv_n[n], channels(n), _owned(n)))
        terms.append((None, Scale(LayerApply(grad, n), g.scalar_at("style_weights", i))))
    terms.append((term_name("tv"), Scale(LayerApply(TotalVariation(_owned("image")), "image"),
                                         "tv_weight")))
    return terms


def build_window_features_graph(weights: Weights, spec: LossSpec,
                                pool_scales: PoolScales | None = None) -> onnx.ModelProto:
    """One window → its content features and its owned Gram sums (tiled targets and the
    statistics pass of a tiled evaluation)."""
    g = GraphBuilder()
    acts, _ = _forward(g, weights, spec, need_backward=False, pool_scales=pool_scales)
    for n in spec.content_layers:
        g.op("Identity", acts[n], outputs=[f"features_{n}"])
    guides = _guides_per_layer(g, spec) if spec.guided else {}
    for n in spec.style_layers:
        gram = (owned_guided_gram(g, acts[n], guides[n], channels(n), _owned(n))
                if spec.guided else owned_gram(g, acts[n], channels(n), _owned(n)))
        g.op("Identity", gram, outputs=[f"gram_sum_{n}"])
    return g.finish(window_features_io(spec))


def build_window_loss_graph(weights: Weights, spec: LossSpec,
                            pool_scales: PoolScales | None = None) -> onnx.ModelProto:
    """One window + the whole image's statistics → its owned terms and its part of the
    gradient (the gradient pass of a tiled evaluation)."""
    g = GraphBuilder()
    acts, tape = _forward(g, weights, spec, need_backward=True, pool_scales=pool_scales)
    taps: dict[str, list[GradFn]] = {}
    for name, term in window_terms(g, spec):
        value, grads = term(g, acts)
        if name is not None:
            g.op("Identity", value, outputs=[name])
        for layer, build in grads:
            taps.setdefault(layer, []).append(build)
    g.op("Identity", _backward(g, tape, taps), outputs=["grad"])
    return g.finish(window_loss_io(spec))


def loss_flops(spec: LossSpec, h: int, w: int) -> float:
    """Floating-point operations of one loss+gradient evaluation, counted analytically:
    forward convolutions, their input-gradient convolutions, and the Gram products."""
    total = 0.0
    for conv in convs_up_to(list(spec.all_layers)):
        d = downsampling(conv.relu)
        total += 2 * 2 * 9 * conv.in_channels * conv.out_channels * (h >> d) * (w >> d)
    for n in spec.style_layers:
        d = downsampling(n)
        total += 2 * 2 * channels(n) ** 2 * (h >> d) * (w >> d)
    return total
