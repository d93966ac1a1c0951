"""Every graph the export writes, built once from random weights (the same network shapes as
VGG19's): the graph-wide checks (tests/test_portable.py, tests/test_cuda_graph.py) run over it."""

from __future__ import annotations

from test_gradients import random_weights

from nst_onnx.config import LossSpec
from nst_onnx.graphs import interface
from nst_onnx.graphs.networks import (
    build_features_graph,
    build_loss_graph,
    build_window_features_graph,
    build_window_loss_graph,
)
from nst_onnx.graphs.steps import STEP_GRAPHS
from nst_onnx.graphs.windows import WINDOW_MOVES


def _graphs() -> list[tuple]:
    """(name, model, interface) for each loss variant, features, window, window-move and
    step graph."""
    weights = random_weights(0, upto="conv5_1")
    scales = {"pool1": [1.0] * 64}
    out = []
    for spec in (LossSpec(), LossSpec(pooling="avg"), LossSpec(guided=True)):
        s = scales if spec.pooling == "avg" else None
        out.append((f"loss-{spec.key}", build_loss_graph(weights, spec, s), interface.loss_io(spec)))
        out.append((f"temporal-loss-{spec.key}", build_loss_graph(weights, spec, s, temporal=True),
                    interface.loss_io(spec, temporal=True)))
        out += [(f"window-features-{spec.key}", build_window_features_graph(weights, spec, s),
                 interface.window_features_io(spec)),
                (f"window-loss-{spec.key}", build_window_loss_graph(weights, spec, s),
                 interface.window_loss_io(spec))]
        if not spec.guided:
            out.append((f"features-{spec.key}", build_features_graph(weights, spec, s),
                        interface.features_io(spec)))
    for name, (io, build) in STEP_GRAPHS.items():
        out.append((f"step-{name}", build(), io() if callable(io) else io))
    for name, (io, build) in WINDOW_MOVES.items():
        out.append((name.replace("_", "-"), build(), io()))
    return out


GRAPHS = _graphs()
IDS = [g[0] for g in GRAPHS]
