"""The ops an exported graph may use, so that one export runs on every runtime we target:
onnxruntime's CPU, CUDA and WebGPU providers (onnxruntime-node, onnxruntime-web), TensorRT
and OpenVINO. The list is what all of them implement for float32 (WebGPU is the narrowest:
no ``ScatterElements``, ``Sum``, ``Max``, ``And``/``Or``, ``Size``, ``Identity``, nor
``MaxPool``'s Indices output). ``GraphBuilder.finish`` refuses a graph outside it."""

from __future__ import annotations

import onnx

PORTABLE_OPS = frozenset("""
    Abs Add AveragePool Cast Clip Concat Conv Div Equal Gather Gemm Greater GreaterOrEqual
    Less LessOrEqual MatMul MaxPool Mul Neg Pad Pow Reciprocal ReduceMax ReduceMean
    ReduceProd ReduceSum Relu Reshape Resize Shape Slice Sqrt Sub Tile Transpose Unsqueeze
""".split())


def portability_problems(model: onnx.ModelProto) -> list[str]:
    """One line per node another runtime would not run as it stands (empty: portable).
    An Identity is allowed only where a graph input or constant is also an output: there
    is no node whose output could carry the name instead."""
    passed_through = {i.name for i in model.graph.input} | {
        t.name for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in passed_through:
            continue
        if node.op_type not in PORTABLE_OPS:
            out.append(f"{node.op_type} {node.name}: not in PORTABLE_OPS")
        elif node.op_type == "MaxPool" and len(node.output) > 1:
            out.append(f"MaxPool {node.name}: an Indices output")
    return out
