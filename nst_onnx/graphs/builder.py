"""A tiny ONNX graph builder: unique names, nodes in order, initializers, and the finished
model checked against its declared interface (:mod:`nst_onnx.graphs.interface`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .interface import Interface
from .portable import portability_problems

OPSET = 17
IR_VERSION = 8
FLOAT = TensorProto.FLOAT


@dataclass
class GraphBuilder:
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    counter: int = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}__{self.counter}"

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, hint: str = "",
           **attrs) -> str | list[str]:
        """Append a node; returns its output name (or names, when ``outputs`` > 1)."""
        names = outputs if isinstance(outputs, list) else [
            self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if len(names) == 1 else names

    def add(self, *terms: str, outputs: list[str] | None = None, hint: str = "") -> str:
        """``terms[0] + terms[1] + …`` as chained Adds (``Sum`` has no WebGPU kernel)."""
        if len(terms) == 1:
            return self.op("Identity", terms[0], outputs=outputs) if outputs else terms[0]
        total = terms[0]
        for t in terms[1:-1]:
            total = self.op("Add", total, t, hint=hint)
        return self.op("Add", total, terms[-1], outputs=outputs or 1, hint=hint)

    def const(self, value, name: str | None = None, dtype=np.float32) -> str:
        name = name or self.fresh("const")
        arr = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=dtype)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, *values: int) -> str:
        """An int64 vector constant (axes, pads, shapes)."""
        return self.const(np.array(values, np.int64))

    def scalar_at(self, vector: str, i: int) -> str:
        return self.op("Gather", vector, self.const(i, dtype=np.int64), axis=0)

    def finish(self, io: Interface, portable: bool = True) -> onnx.ModelProto:
        """The model, its inputs and outputs exactly as ``io`` declares them; refused if
        ``portable`` and an op is outside :data:`.portable.PORTABLE_OPS`."""
        produced = {o for n in self.nodes for o in n.output}
        missing = [t.name for t in io.outputs if t.name not in produced]
        if missing:
            raise AssertionError(f"{io.name}: declared outputs not built: {missing}")
        self._fold_identities({t.name for t in io.outputs})
        graph = helper.make_graph(self._scalar_inputs(io) + self.nodes, io.name,
                                  io.value_infos("inputs"), io.value_infos("outputs"),
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="nst-onnx")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        problems = portability_problems(model) if portable else []
        if problems:
            raise AssertionError(f"{io.name}: not portable: {problems}")
        return model

    def _fold_identities(self, declared: set[str]) -> None:
        """``Identity(t) → name`` becomes the node that made ``t`` writing ``name`` itself
        (every reader of ``t`` reads ``name``): the builders name their outputs with
        Identity, which WebGPU has no kernel for. Kept where ``t`` is no node's output (a
        graph input or a constant), is a declared output itself or is copied twice."""
        made = {o for n in self.nodes if n.op_type != "Identity" for o in n.output}
        renamed: dict[str, str] = {}
        kept = []
        for node in self.nodes:
            src = node.input[0] if node.op_type == "Identity" else None
            if src in made and src not in declared and src not in renamed:
                renamed[src] = node.output[0]
            else:
                kept.append(node)
        for node in kept:
            node.input[:] = [renamed.get(i, i) for i in node.input]
            node.output[:] = [renamed.get(o, o) for o in node.output]
        self.nodes[:] = kept

    def _scalar_inputs(self, io: Interface) -> list:
        """A declared scalar input reshaped to () before any node reads it: some runtimes
        (onnxruntime-node) accept a one-element [1] tensor there, and every output it
        reaches would then be [1] where the graph declares (). Returns the Reshape nodes."""
        scalars = {t.name: f"{t.name}__scalar" for t in io.inputs if t.shape == ()}
        if not scalars:
            return []
        for node in self.nodes:
            node.input[:] = [scalars.get(i, i) for i in node.input]
        empty = self.const(np.zeros(0, np.int64), "scalar_shape")
        return [helper.make_node("Reshape", [name, empty], [as_scalar], name=as_scalar)
                for name, as_scalar in scalars.items()]
