"""The hand-written backward pass against central finite differences of a float64 reference.

The reference (tests/reference.py) is plain numpy: it shares no code with the graph builder.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from nst_onnx.config import LossSpec
from nst_onnx.graphs.interface import inv_sizes, loss_io
from nst_onnx.graphs.networks import build_features_graph, build_loss_graph
from nst_onnx.graphs.weights import LayerWeights, Weights
from nst_onnx.run.binding import Evaluator
from nst_onnx.run.sessions import make_session
from nst_onnx.vgg19 import CONVS


def random_weights(seed: int, upto: str = "conv2_2") -> Weights:
    rng = np.random.default_rng(seed)
    layers = {}
    for conv in CONVS:
        std = np.sqrt(2.0 / (9 * conv.in_channels))
        if conv.name == "conv1_1":
            std /= 60.0  # pixels are 0..255, not unit scale
        w = (rng.standard_normal((conv.out_channels, conv.in_channels, 3, 3)) * std)
        b = rng.standard_normal(conv.out_channels) * 0.1
        layers[conv.name] = LayerWeights(b=b.astype(np.float32), w=w.astype(np.float32))
        if conv.name == upto:
            break
    return Weights(layers, {"kind": "random"})


def problem(weights: Weights, spec: LossSpec, shape, seed: int, only: str | None = None):
    """Targets from a random 'content' and 'style' image, evaluator, and the reference loss.
    Average pooling gets random per-channel magnitude factors (as nst_onnx.graphs.calibrate's)."""
    rng = np.random.default_rng(seed)
    scales = {"pool1": rng.uniform(0.5, 2.5, 64)} if spec.pooling == "avg" else None
    h, w = shape
    content = rng.uniform(0, 255, (3, h, w))
    # a style with other statistics than the content, so G − A is not a float32 cancellation
    style = rng.uniform(0, 255, (3, h + 3, w - 2)) ** 2 / 255 * np.array([1.0, 0.6, 0.3])[:, None, None]
    fs = make_session(build_features_graph(weights, spec, scales).SerializeToString(), threads=2)
    feats_c = dict(zip([o.name for o in fs.get_outputs()],
                       fs.run(None, {"image": content[None].astype(np.float32)})))
    feats_s = dict(zip([o.name for o in fs.get_outputs()],
                       fs.run(None, {"image": style[None].astype(np.float32)})))
    wc = np.array([5.0] * len(spec.content_layers))
    ws = np.array([100.0 / (i + 1) for i in range(len(spec.style_layers))])
    wtv = 1e-3
    # 'only' switches the other terms off, so a wrong scale in any one term shows
    wc *= only in (None, "content")
    ws *= only in (None, "style")
    wtv *= only in (None, "tv")
    fixed = {f"target_{n}": feats_c[f"features_{n}"] for n in spec.content_layers}
    fixed |= {f"target_gram_{n}": feats_s[f"gram_{n}"] for n in spec.style_layers}
    guides = None
    if spec.guided:  # two soft, overlapping regions; region 2's target from another style
        yy, xx = np.mgrid[0:h, 0:w]
        guides = np.stack([np.clip(xx / w * 1.5, 0, 1), np.clip(1.2 - yy / h, 0, 1)])
        other = dict(zip([o.name for o in fs.get_outputs()],
                         fs.run(None, {"image": np.sqrt(style[None] * 255).astype(np.float32)})))
        fixed |= {f"target_gram_{n}": np.stack([feats_s[f"gram_{n}"], other[f"gram_{n}"]])
                  for n in spec.style_layers}
        fixed["guides"] = guides[:, None]
    fixed |= {"content_weights": wc, "style_weights": ws, "tv_weight": np.array(wtv),
              "inv_sizes": inv_sizes(spec, h, w)}
    ls = make_session(build_loss_graph(weights, spec, scales).SerializeToString(), threads=2)
    ev = Evaluator(ls, loss_io(spec), fixed)
    dense = {k: (v.weight, v.b) for k, v in weights.layers.items()}
    ct = {n: fixed[f"target_{n}"][0].astype(np.float64) for n in spec.content_layers}
    gt = {n: fixed[f"target_gram_{n}"].astype(np.float64) for n in spec.style_layers}

    def ref_loss(x):
        return ref.loss(x, dense, spec.content_layers, spec.style_layers, spec.pooling,
                        ct, gt, wc, ws, wtv, scales, guides)

    return ev, ref_loss, rng


SPECS = [
    LossSpec(("relu2_1",), ("relu1_1", "relu1_2", "relu2_2"), "max"),
    LossSpec(("relu2_1",), ("relu1_1", "relu1_2", "relu2_2"), "avg"),
    LossSpec(("relu1_2", "relu2_2"), ("relu2_1",), "max"),
    LossSpec(("relu1_2", "relu2_2"), ("relu2_1",), "avg"),
    LossSpec(("relu2_1",), ("relu1_1", "relu1_2", "relu2_2"), "max", guided=True),
    LossSpec(("relu2_1",), ("relu1_1", "relu2_2"), "avg", guided=True),
]


@pytest.mark.parametrize("only", [None, "content", "style", "tv"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key)
def test_gradient_matches_finite_differences_of_float64_reference(spec, only):
    weights = random_weights(0)
    ev, ref_loss, rng = problem(weights, spec, (20, 27), seed=1, only=only)
    x = rng.uniform(20, 235, (3, 20, 27))
    out = ev(x[None])
    # the graph's forward loss agrees with the reference
    assert out.loss == pytest.approx(ref_loss(x), rel=1e-4)
    eps = 1e-5  # float64: small steps stay clear of ReLU kinks
    for _ in range(3):
        d = rng.standard_normal(x.shape)
        fd = (ref_loss(x + eps * d) - ref_loss(x - eps * d)) / (2 * eps)
        an = float(np.sum(out.grad[0].astype(np.float64) * d))
        assert an == pytest.approx(fd, rel=1e-3), (an, fd)


def test_odd_sizes_and_edges_get_correct_gradient():
    """Odd H, W: pooling floors; the last row/column's gradient must still be right."""
    spec = LossSpec(("relu2_2",), ("relu2_1",), "max")
    weights = random_weights(3)
    ev, ref_loss, rng = problem(weights, spec, (17, 19), seed=4)
    x = rng.uniform(20, 235, (3, 17, 19))
    out = ev(x[None])
    d = np.zeros_like(x)
    d[:, -1, :] = rng.standard_normal((3, 19))  # only the row the pool dropped
    d[:, :, -1] = rng.standard_normal((3, 17))
    eps = 1e-5  # float64: small steps stay clear of ReLU kinks
    fd = (ref_loss(x + eps * d) - ref_loss(x - eps * d)) / (2 * eps)
    an = float(np.sum(out.grad[0] * d))
    assert an == pytest.approx(fd, rel=1e-3)
