"""``expect``, after onnx's own operator tests: build a graph of one kernel, run it on
onnxruntime's CPU provider, compare with what numpy says the outputs must be."""

from __future__ import annotations

import numpy as np
from onnx import helper

from nst_onnx.graphs.builder import GraphBuilder
from nst_onnx.graphs.interface import Interface, Tensor
from nst_onnx.run.sessions import make_session

_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.int64): "int64",
           np.dtype(np.bool_): "bool"}


def run_kernel(build, inputs: dict[str, np.ndarray], n_outputs: int = 1,
               portable: bool = True) -> list[np.ndarray]:
    """``build(g, *input names)`` appends the kernel and returns its output name(s);
    ``portable=False`` for a kernel written with ops not every runtime has."""
    g = GraphBuilder()
    outs = build(g, *inputs)
    outs = [outs] if isinstance(outs, str) else list(outs)
    assert len(outs) == n_outputs
    names = [f"out{i}" for i in range(n_outputs)]
    for o, n in zip(outs, names):
        g.op("Identity", o, outputs=[n])
    io = Interface("kernel", "kernel.onnx",
                   tuple(Tensor(k, v.shape, k, "input", _DTYPES[v.dtype])
                         for k, v in inputs.items()),
                   tuple(Tensor(n, (), n, "output") for n in names))
    model = g.finish(io, portable)
    for o in model.graph.output:  # outputs of any rank: let shape inference decide
        o.CopyFrom(helper.make_empty_tensor_value_info(o.name))
    session = make_session(model.SerializeToString(), threads=1)
    return session.run(names, inputs)


def expect(build, inputs: dict[str, np.ndarray], outputs: list[np.ndarray],
           rtol: float = 1e-5, atol: float = 1e-6) -> None:
    got = run_kernel(build, inputs, len(outputs))
    for g, want in zip(got, outputs):
        assert g.shape == want.shape, (g.shape, want.shape)
        np.testing.assert_allclose(g, want, rtol=rtol, atol=atol)
