"""Every exported graph is portable (nst_onnx/graphs/portable.py): only ops all our target
runtimes have, no MaxPool Indices, no Identity a runtime would have to run, and outputs
with exactly the shapes and ranks the interface declares (a runtime that trusts the
declaration, onnxruntime-node reading a scalar loss, gets what it was promised)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from exported_graphs import GRAPHS, IDS
from onnx import TensorProto, helper

from nst_onnx.graphs.builder import GraphBuilder
from nst_onnx.graphs.interface import Interface, Tensor
from nst_onnx.graphs.portable import portability_problems
from nst_onnx.run.sessions import make_session

H, W, R, M = 37, 42, 2, 3  # odd sizes: the floored-away edges of every pool
WINDOW = (5, 6, 30, 23)  # y0, x0, y1, x1 of the window graphs' window
INTS = {"starts": WINDOW[:2], "ends": WINDOW[2:],  # the window graphs' int64 inputs
        "pads": (0, 0, WINDOW[0], WINDOW[1], 0, 0, H - WINDOW[2], W - WINDOW[3])}


def _dim(d: int | str) -> int:
    """A declared dimension at H×W: names as interface.py gives them."""
    if isinstance(d, int):
        return d
    if d in ("H", "W"):
        return H if d == "H" else W
    if d in ("R", "M"):
        return R if d == "R" else M
    if d in ("h", "w"):  # a window (graphs/windows.py): WINDOW's
        return WINDOW[2] - WINDOW[0] if d == "h" else WINDOW[3] - WINDOW[1]
    if d == "N":
        return 3 * H * W
    if d.startswith(("h_", "w_")):
        from nst_onnx.vgg19 import downsampling
        return (H if d[0] == "h" else W) >> downsampling(d[2:])
    return (H if d[0] == "h" else W) >> int(d[1:])  # h0…h4, w0…w4: per pooling level




@pytest.mark.parametrize("name, model, io", GRAPHS, ids=IDS)
def test_graph_is_portable_and_keeps_its_declared_shapes(name, model, io):
    assert portability_problems(model) == []
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    rng = np.random.default_rng(0)
    feeds = {t.name: (rng.uniform(0, 255, [_dim(d) for d in t.shape]) if t.name in ("image", "x")
                      else rng.uniform(0.1, 1.0, [_dim(d) for d in t.shape])).astype(np.float32)
             for t in io.inputs if t.dtype == "float32"}
    feeds |= {t.name: np.array(INTS[t.name], np.int64) for t in io.inputs if t.dtype == "int64"}
    session = make_session(model.SerializeToString(), threads=1)
    outs = session.run(None, feeds)
    got = {o.name: v for o, v in zip(session.get_outputs(), outs)}
    for t in io.outputs:
        assert got[t.name].shape == tuple(_dim(d) for d in t.shape), (t.name, got[t.name].shape)
        assert np.isfinite(got[t.name]).all(), t.name


def test_a_one_element_feed_for_a_scalar_input_still_gives_scalars():
    """onnxruntime-node hands a [1] tensor to a declared [] input (``tv_weight``); the graph
    reshapes it, where a [1] would otherwise carry through to ``tv_loss`` and ``loss``."""
    _, model, io = GRAPHS[0]
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.uniform(0.1, 1.0, [_dim(d) for d in t.shape] or [1]).astype(np.float32)
             for t in io.inputs}
    assert feeds["tv_weight"].shape == (1,)
    session = make_session(model.SerializeToString(), threads=1)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert got["tv_loss"].shape == () and got["loss"].shape == ()


def _tiny(nodes, outputs=("y",)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_check_names_what_a_runtime_lacks():
    model = _tiny([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2]),
                   helper.make_node("Sum", ["y", "y"], ["s"]),
                   helper.make_node("Identity", ["s"], ["z"]),
                   helper.make_node("Identity", ["x"], ["x_out"])], ("y", "z", "x_out"))
    problems = portability_problems(model)
    assert [p.split()[0] for p in problems] == ["MaxPool", "Sum", "Identity"]  # x_out passes


def test_finish_folds_identities_and_refuses_what_is_not_portable():
    io = Interface("t", "t.onnx", (Tensor("x", (1, 1, 4, 4), "x", "input"),),
                   (Tensor("y", (1, 1, 4, 4), "y", "output"), Tensor("z", (1, 1, 4, 4), "z", "output")))
    g = GraphBuilder()
    t = g.op("Relu", "x")
    g.op("Identity", t, outputs=["y"])
    g.op("Identity", g.op("Mul", t, t), outputs=["z"])  # t read after its Identity: renamed too
    model = g.finish(io)
    assert [n.op_type for n in model.graph.node] == ["Relu", "Mul"]
    x = np.random.default_rng(1).normal(size=(1, 1, 4, 4)).astype(np.float32)
    y, z = make_session(model.SerializeToString(), threads=1).run(["y", "z"], {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(z, np.maximum(x, 0) ** 2)

    g = GraphBuilder()
    g.op("Identity", g.op("Sum", "x", "x"), outputs=["y"])
    g.op("Identity", "x", outputs=["z"])
    with pytest.raises(AssertionError, match="not portable.*Sum"):
        g.finish(io)
    assert isinstance(g.finish(io, portable=False), onnx.ModelProto)
