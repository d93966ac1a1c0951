"""Pure functions that build the ONNX graphs: VGG19 forward, the loss, and its backward pass.

The backward pass is written by hand as ONNX ops — our gradient kernels:

* ReLU: ``g_z = g_a · (a > 0)``;
* 3×3 conv, stride 1, pad 1: ``conv_input_grad`` is a plain ``Conv`` of ``g_z`` with the
  weights transposed (in ↔ out) and rotated 180°, derived in-graph from the one stored
  weight (onnxruntime folds it once at session start);
* 2×2 max pool: ``g_out`` scattered to the arg-max recorded by ``MaxPool``'s ``Indices``
  (exact, tie-safe: one winner per window); rows/columns lost to flooring get zero;
* 2×2 average pool: ``g_out / 4`` upsampled (nearest), zero-padded to odd edges; with
  magnitude rescaling (``y = s ⊙ avgpool(a)``, :mod:`nst_onnx.calibrate`) ``g_out`` is
  first multiplied by the same ``s``;
* content ``Lc = wc·mean((F−P)²)`` → ``2·wc·(F−P)/N``; Gram ``G = F Fᵀ / N``; style
  ``Ls = ws·mean((G−A)²)`` → ``4·ws·(G−A) F / (C²·N)``; TV ``wtv·½·Σ(Δx)²``.

Preprocessing lives inside the graphs: the image is RGB in [0, 255]; the Caffe mean is
subtracted and the RGB→BGR flip is folded into ``conv1_1``'s input channels, so it costs
nothing and its gradient is carried by ``conv1_1``'s input gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import BadInput
from .vgg19 import MEAN_BGR, Conv, canonical, channels, convs_up_to
from .weights import LayerWeights, Weights

OPSET = 17
FLOAT = TensorProto.FLOAT
POOLINGS = ("max", "avg")
PoolScales = Mapping[str, np.ndarray]  # 'pool1' … 'pool4' → per-channel factor

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclass(frozen=True)
class LossSpec:
    """Which layers the loss taps and which pooling the network uses (fixed at export)."""

    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    pooling: str = "max"
    guided: bool = False  # style loss per region: guided Gram matrices (Gatys et al. 2017)

    def __post_init__(self):
        object.__setattr__(self, "content_layers", _layers(self.content_layers, "content"))
        object.__setattr__(self, "style_layers", _layers(self.style_layers, "style"))
        if self.pooling not in POOLINGS:
            raise BadInput(f"unknown pooling {self.pooling!r}: use max or avg")

    @property
    def all_layers(self) -> tuple[str, ...]:
        return self.content_layers + self.style_layers

    @property
    def key(self) -> str:
        """Short stable name for this configuration (model directory name)."""
        c = "+".join(n[4:] for n in self.content_layers)
        s = "+".join(n[4:] for n in self.style_layers)
        return f"vgg19-{self.pooling}-c{c}-s{s}" + ("-guided" if self.guided else "")


def _layers(names, what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out = tuple(dict.fromkeys(canonical(n) for n in names))
    if what == "style" and not out:
        raise BadInput("no style layers given: name at least one, e.g. relu1_1")
    return out


@dataclass
class _Graph:
    """A tiny builder: unique names, nodes in order, initializers."""

    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    counter: int = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}__{self.counter}"

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, hint: str = "",
           **attrs) -> str | list[str]:
        names = outputs if isinstance(outputs, list) else [
            self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if len(names) == 1 else names

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or self.fresh("const")
        arr = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def scalar_at(self, vector: str, i: int) -> str:
        return self.op("Gather", vector, self.const(i, dtype=np.int64), axis=0)


# --------------------------------------------------------------------------- weights


def _weight_tensor(g: _Graph, conv: Conv, lw: LayerWeights) -> str:
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


# --------------------------------------------------------------------------- forward


@dataclass
class _Tape:
    """What the backward pass needs from the forward pass, per convolution.

    Only small things are kept: boolean ReLU masks (1 byte per element) rather than the
    float activations, the pool input's shape rather than the tensor, and max-pool indices.
    """

    conv: Conv
    weight: str
    mask: str | None  # a > 0 (bool); None where a max pool's mask stands in for it
    pool_shape: str | None = None  # shape of the activation entering this conv's pool
    pool_idx: str | None = None  # max pool arg-max indices
    pool_mask: str | None = None  # max pool output > 0 (bool)
    pool_scale: str | None = None  # average pool's magnitude factor (1, C, 1, 1)


def _forward(g: _Graph, weights: Weights, spec: LossSpec, image: str, need_backward: bool,
             pool_scales: PoolScales | None = None):
    mean_rgb = np.array(MEAN_BGR[::-1], np.float32).reshape(1, 3, 1, 1)
    h = g.op("Sub", image, g.const(mean_rgb, "mean_rgb"), hint="centered")
    tape: list[_Tape] = []
    acts: dict[str, str] = {}
    convs = convs_up_to(list(spec.all_layers))
    for i, conv in enumerate(convs):
        t = _Tape(conv, "", None)
        if conv.name.endswith("_1") and conv.name != "conv1_1":
            kw = dict(kernel_shape=[2, 2], strides=[2, 2], hint="pool")
            if spec.pooling == "avg":
                y = g.op("AveragePool", h, **kw)
                factor = (pool_scales or {}).get(f"pool{int(conv.name[4]) - 1}")
                if factor is not None:  # see nst_onnx.calibrate
                    t.pool_scale = g.const(np.asarray(factor, np.float32).reshape(1, -1, 1, 1))
                    y = g.op("Mul", y, t.pool_scale, hint="pool_scaled")
            elif need_backward:
                y, t.pool_idx = g.op("MaxPool", h, outputs=2, **kw)
                if tape[-1].mask is None:
                    # the winner of each window is > 0 exactly when the ReLU before it passed
                    # gradient: this quarter-size mask replaces that ReLU's full-size one
                    t.pool_mask = g.op("Greater", y, g.const(0.0), hint="pool_mask")
            else:
                y = g.op("MaxPool", h, **kw)
            if need_backward:
                t.pool_shape = g.op("Shape", h, hint="pool_in_shape")
            h = y
        lw = weights.layers[conv.name]
        t.weight = _weight_tensor(g, conv, lw)
        b = g.const(lw.b, f"{conv.name}.bias")
        z = g.op("Conv", h, t.weight, b, kernel_shape=[3, 3], pads=[1, 1, 1, 1], hint=conv.name)
        a = g.op("Relu", z, outputs=[conv.relu])
        # a ReLU whose only way to the loss is a max pool needs no full-size mask (see above)
        only_via_maxpool = (spec.pooling == "max" and i + 1 < len(convs)
                            and convs[i + 1].name.endswith("_1")
                            and conv.relu not in spec.all_layers)
        if need_backward and not only_via_maxpool:
            t.mask = g.op("Greater", a, g.const(0.0), hint=f"{conv.relu}_mask")
        tape.append(t)
        acts[conv.relu] = a
        h = a
    return acts, tape


def loss_flops(spec: LossSpec, h: int, w: int) -> float:
    """Floating-point operations of one loss+gradient evaluation, counted analytically:
    forward convolutions, their input-gradient convolutions, and the Gram products."""
    from .vgg19 import downsampling

    total = 0.0
    for conv in convs_up_to(list(spec.all_layers)):
        d = downsampling(conv.relu)
        total += 2 * 2 * 9 * conv.in_channels * conv.out_channels * (h >> d) * (w >> d)
    for n in spec.style_layers:
        d = downsampling(n)
        total += 2 * 2 * channels(n) ** 2 * (h >> d) * (w >> d)
    return total


def _size_recip(g: _Graph, x: str) -> str:
    """1 / (number of elements of x), as a float scalar."""
    n = g.op("Cast", g.op("Size", x), to=FLOAT)
    return g.op("Reciprocal", n)


def gram(g: _Graph, f: str, channels: int) -> tuple[str, str, str]:
    """Gram matrix ``F Fᵀ / N`` of activation ``f`` (1, C, h, w); returns (G, F as C×M, 1/N)."""
    fm = g.op("Reshape", f, g.const(np.array([channels, -1], np.int64)), hint="fmat")
    inv_n = _size_recip(g, f)
    ffT = g.op("Gemm", fm, fm, transB=1, hint="ffT")
    return g.op("Mul", ffT, inv_n, hint="gram"), fm, inv_n


# --------------------------------------------------------------------------- graphs


def build_features_graph(weights: Weights, spec: LossSpec,
                         pool_scales: PoolScales | None = None) -> onnx.ModelProto:
    """image → the content layers' features and the style layers' Gram matrices.

    ``pool_scales``: average pooling's per-channel factors (see :mod:`nst_onnx.calibrate`).
    """
    g = _Graph()
    acts, _ = _forward(g, weights, spec, "image", need_backward=False, pool_scales=pool_scales)
    outputs = []
    for layer in spec.content_layers:
        g.op("Identity", acts[layer], outputs=[f"features_{layer}"])
        outputs.append(helper.make_tensor_value_info(
            f"features_{layer}", FLOAT, [1, channels(layer), f"h_{layer}", f"w_{layer}"]))
    for layer in spec.style_layers:
        gm, _, _ = gram(g, acts[layer], channels(layer))
        g.op("Identity", gm, outputs=[f"gram_{layer}"])
        outputs.append(helper.make_tensor_value_info(f"gram_{layer}", FLOAT, [channels(layer)] * 2))
    inputs = [helper.make_tensor_value_info("image", FLOAT, [1, 3, "H", "W"])]
    return _model(g, "nst_features", inputs, outputs)


def build_loss_graph(weights: Weights, spec: LossSpec,
                     pool_scales: PoolScales | None = None) -> onnx.ModelProto:
    """image + targets + run-time weights → loss, ∂loss/∂image, and every term."""
    g = _Graph()
    acts, tape = _forward(g, weights, spec, "image", need_backward=True, pool_scales=pool_scales)
    terms: list[str] = []
    # Each tap's full-size gradient is built lazily, when the backward pass reaches its
    # layer: nodes run in index order, so built here it would be computed during the forward
    # pass and held through all of it (~130 MB at 512²).
    tap_grads: dict[str, list[Callable[[], str]]] = {}

    for i, layer in enumerate(spec.content_layers):
        wc = g.scalar_at("content_weights", i)
        diff = g.op("Sub", acts[layer], f"target_{layer}", hint="cdiff")
        mse = g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0)
        terms.append(g.op("Mul", wc, mse, outputs=[f"content_loss_{layer}"]))
        # ∂Lc/∂F = 2·wc·(F − P)/N
        scale = g.op("Mul", g.op("Mul", wc, g.const(2.0)), _size_recip(g, diff))
        tap_grads.setdefault(layer, []).append(
            lambda diff=diff, scale=scale: g.op("Mul", diff, scale, hint="cgrad"))

    guides = _guides_per_layer(g, spec) if spec.guided else {}
    for i, layer in enumerate(spec.style_layers):
        ws = g.scalar_at("style_weights", i)
        loss, build_grad = (guided_style_loss(g, acts[layer], guides[layer], layer, ws)
                            if spec.guided else style_loss(g, acts[layer], layer, ws))
        terms.append(g.op("Identity", loss, outputs=[f"style_loss_{layer}"]))
        tap_grads.setdefault(layer, []).append(build_grad)

    tv, tv_grad = _total_variation(g, "image", g.op("Identity", "tv_weight"))
    terms.append(g.op("Identity", tv, outputs=["tv_loss"]))
    g.op("Sum", *terms, outputs=["loss"])

    grad = _backward(g, tape, tap_grads)
    g.op("Add", grad, tv_grad, outputs=["grad"])

    inputs = [helper.make_tensor_value_info("image", FLOAT, [1, 3, "H", "W"])]
    if spec.guided:
        inputs.append(helper.make_tensor_value_info("guides", FLOAT, ["R", 1, "H", "W"]))
    for layer in spec.content_layers:
        inputs.append(helper.make_tensor_value_info(
            f"target_{layer}", FLOAT, [1, channels(layer), f"h_{layer}", f"w_{layer}"]))
    for layer in spec.style_layers:
        c = channels(layer)
        inputs.append(helper.make_tensor_value_info(
            f"target_gram_{layer}", FLOAT, ["R", c, c] if spec.guided else [c, c]))
    inputs += [
        helper.make_tensor_value_info("content_weights", FLOAT, [len(spec.content_layers)]),
        helper.make_tensor_value_info("style_weights", FLOAT, [len(spec.style_layers)]),
        helper.make_tensor_value_info("tv_weight", FLOAT, []),
    ]
    outputs = [helper.make_tensor_value_info("loss", FLOAT, []),
               helper.make_tensor_value_info("grad", FLOAT, [1, 3, "H", "W"])]
    outputs += [helper.make_tensor_value_info(f"content_loss_{n}", FLOAT, [])
                for n in spec.content_layers]
    outputs += [helper.make_tensor_value_info(f"style_loss_{n}", FLOAT, [])
                for n in spec.style_layers]
    outputs.append(helper.make_tensor_value_info("tv_loss", FLOAT, []))
    return _model(g, "nst_loss_and_grad", inputs, outputs)


def style_loss(g: _Graph, f: str, layer: str, ws: str) -> tuple[str, Callable[[], str]]:
    """``ws·mean((G − A)²)`` and a builder of its gradient ``4·ws·(G − A) F / (C²·N)``."""
    c = channels(layer)
    gm, fm, inv_n = gram(g, f, c)
    diff = g.op("Sub", gm, f"target_gram_{layer}", hint="gdiff")
    loss = g.op("Mul", ws, g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0))
    # scaled on the C×C side, multiplied into F only when the backward walk gets here
    scaled = g.op("Mul", diff, g.op("Mul", g.op("Mul", ws, g.const(4.0 / (c * c))), inv_n),
                  hint="gdiff_scaled")
    shape = g.op("Shape", f)
    return loss, lambda: g.op("Reshape", g.op("MatMul", scaled, fm), shape, hint="sgrad")


def _guides_per_layer(g: _Graph, spec: LossSpec) -> dict[str, str]:
    """The ``guides`` input (R, 1, H, W) brought to each style layer's size by the same 2×2
    average pools the features went through (floored like them)."""
    out, t, level = {}, "guides", 0
    for layer in sorted(spec.style_layers, key=lambda n: int(n[4])):
        while level < int(layer[4]) - 1:
            t = g.op("AveragePool", t, kernel_shape=[2, 2], strides=[2, 2], hint="guide")
            level += 1
        out[layer] = t
    return out


def guided_style_loss(g: _Graph, f: str, guide: str, layer: str,
                      ws: str) -> tuple[str, Callable[[], str]]:
    """Guided Gram matrices (Gatys et al. 2017, "Controlling Perceptual Factors"):
    region r's features ``F_r = F ⊙ T_r``, ``G_r = F_r F_rᵀ / (C·ΣT_r²)`` — an all-ones guide
    gives the plain Gram — and ``Ls = ws·mean_{r,i,j}((G_r − A_r)²)``, so regions share the
    style weight as blended styles do. Gradient:
    ``∂Ls/∂F = Σ_r T_r ⊙ 4·ws·(G_r − A_r) F_r / (R·C²·C·ΣT_r²)``."""
    c = channels(layer)
    fr = g.op("Mul", f, guide, hint="f_guided")  # (R, C, h, w)
    fm = g.op("Reshape", fr, g.const(np.array([0, c, -1], np.int64)), hint="fmat_r")
    energy = g.op("ReduceSum", g.op("Mul", guide, guide), g.const(np.array([1, 2, 3], np.int64)))
    inv_n = g.op("Reciprocal", g.op("Max", g.op("Mul", energy, g.const(float(c))),
                                    g.const(1e-6)))  # (R, 1, 1, 1)
    inv_n = g.op("Reshape", inv_n, g.const(np.array([-1, 1, 1], np.int64)))
    gm = g.op("Mul", g.op("MatMul", fm, g.op("Transpose", fm, perm=[0, 2, 1])), inv_n,
              hint="gram_r")
    diff = g.op("Sub", gm, f"target_gram_{layer}", hint="gdiff")
    loss = g.op("Mul", ws, g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0))
    r = g.op("Cast", g.op("Gather", g.op("Shape", diff), g.const(0, dtype=np.int64)), to=FLOAT)
    coef = g.op("Div", g.op("Mul", ws, g.const(4.0 / (c * c))), r)
    scaled = g.op("Mul", diff, g.op("Mul", inv_n, coef), hint="gdiff_scaled")

    def grad() -> str:
        per_region = g.op("Reshape", g.op("MatMul", scaled, fm), g.op("Shape", fr))
        return g.op("ReduceSum", g.op("Mul", per_region, guide), g.const(np.array([0], np.int64)),
                    keepdims=1, hint="sgrad")
    return loss, grad


def _backward(g: _Graph, tape: list[_Tape], tap_grads: dict[str, list[Callable[[], str]]]) -> str:
    """Walk the tape from the deepest layer back to the image, summing taps on the way."""
    grad: str | None = None
    for t in reversed(tape):
        taps = [build() for build in tap_grads.get(t.conv.relu, [])]
        if taps:
            grad = g.op("Sum", *([grad] if grad else []) + taps, hint=f"g_{t.conv.relu}")
        if grad is None:
            continue
        if t.mask is not None:
            grad = relu_grad(g, grad, t.mask)
        grad = conv_input_grad(g, grad, t.weight, t.conv)
        if t.pool_idx is not None:
            if t.pool_mask is not None:
                grad = relu_grad(g, grad, t.pool_mask)
            grad = maxpool_grad(g, grad, t.pool_shape, t.pool_idx)
        elif t.pool_shape is not None:
            if t.pool_scale is not None:
                grad = g.op("Mul", grad, t.pool_scale)
            grad = avgpool_grad(g, grad, t.pool_shape)
    return grad


def relu_grad(g: _Graph, grad: str, mask: str) -> str:
    """g · (a > 0). The mask is stored as bool; Mul by its float cast beats Where 3×."""
    return g.op("Mul", grad, g.op("Cast", mask, to=FLOAT), hint="g_z")


def conv_input_grad(g: _Graph, gz: str, weight: str, conv: Conv) -> str:
    """∂/∂input of a 3×3, pad-1 conv: Conv with W'[i,o] = W[o,i] rotated 180°."""
    wt = g.op("Transpose", weight, perm=[1, 0, 2, 3])
    starts = g.const(np.array([-1, -1], np.int64))
    ends = g.const(np.array([np.iinfo(np.int64).min] * 2, np.int64))
    axes = g.const(np.array([2, 3], np.int64))
    steps = g.const(np.array([-1, -1], np.int64))
    wf = g.op("Slice", wt, starts, ends, axes, steps, hint=f"{conv.name}.weight_flipT")
    return g.op("Conv", gz, wf, kernel_shape=[3, 3], pads=[1, 1, 1, 1], hint=f"g_in_{conv.name}")


def maxpool_grad(g: _Graph, grad: str, in_shape: str, indices: str) -> str:
    """Route each window's gradient to its recorded arg-max; everything else is zero."""
    flat = g.const(np.array([-1], np.int64))
    size = g.op("ReduceProd", in_shape, keepdims=1)
    zeros = g.op("ConstantOfShape", size, value=helper.make_tensor("z", FLOAT, [1], [0.0]))
    scattered = g.op("ScatterElements", zeros, g.op("Reshape", indices, flat),
                     g.op("Reshape", grad, flat), axis=0)
    return g.op("Reshape", scattered, in_shape, hint="g_pool")


def avgpool_grad(g: _Graph, grad: str, in_shape: str) -> str:
    """g/4 copied to each window's four pixels; rows/columns the pool floored away get zero."""
    quarter = g.op("Mul", grad, g.const(0.25))
    up = g.op("Resize", quarter, "", g.const(np.array([1, 1, 2, 2], np.float32)), mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    hw_in = _hw(g, in_shape)
    hw_up = _hw(g, g.op("Shape", up))
    pad_end = g.op("Sub", hw_in, hw_up)
    pads = g.op("Concat", g.const(np.zeros(6, np.int64)), pad_end, axis=0)
    return g.op("Pad", up, pads, hint="g_pool")


def _hw(g: _Graph, shape: str) -> str:
    return g.op("Slice", shape, g.const(np.array([2], np.int64)),
                g.const(np.array([4], np.int64)))


def _total_variation(g: _Graph, x: str, wtv: str) -> tuple[str, str]:
    """``wtv·½·Σ(Δx)²`` over rows and columns, and its gradient ``wtv·(Δ_prev − Δ_next)``."""
    big = np.iinfo(np.int64).max
    parts, grads = [], []
    for axis in (2, 3):
        ax = g.const(np.array([axis], np.int64))
        nxt = g.op("Slice", x, g.const(np.array([1], np.int64)), g.const(np.array([big])), ax)
        prv = g.op("Slice", x, g.const(np.array([0], np.int64)), g.const(np.array([-1])), ax)
        d = g.op("Sub", nxt, prv, hint=f"tv_d{axis}")
        parts.append(g.op("ReduceSum", g.op("Mul", d, d), keepdims=0))
        before = np.zeros(8, np.int64)
        before[axis] = 1
        after = np.zeros(8, np.int64)
        after[4 + axis] = 1
        grads.append(g.op("Sub", g.op("Pad", d, g.const(before)), g.op("Pad", d, g.const(after))))
    half_w = g.op("Mul", wtv, g.const(0.5))
    tv = g.op("Mul", half_w, g.op("Add", *parts), hint="tv")
    grad = g.op("Mul", wtv, g.op("Add", *grads), hint="tv_grad")
    return tv, grad


def _model(g: _Graph, name: str, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nst-onnx")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
