"""Every node of the loss graph has a CUDA kernel for the types it gets, so on a GPU no node
falls back to the CPU (and no tensor makes a host round trip). Checked here, without a GPU,
against onnxruntime's kernel table for its CUDA provider (docs/OperatorKernels.md,
CUDAExecutionProvider, the versions covering opset 17); ops whose inputs are all shapes
(int64 on the host by design: Shape's output, Reshape/Slice/Pad/ConstantOfShape's shape
inputs) are only checked for their data input."""

from __future__ import annotations

import onnx
import pytest
from exported_graphs import GRAPHS, IDS

F, I64, I32, B, U8 = "float", "int64", "int32", "bool", "uint8"
ANY = {F, I64, I32, B, U8}

# op → types its first (data) input may have on CUDA
CUDA_KERNELS = {
    "Add": {F, I64, I32}, "AveragePool": {F}, "Cast": ANY, "Concat": ANY,
    "ConstantOfShape": {I64}, "Conv": {F}, "Div": {F, I64, I32}, "Equal": {F, I64, I32, B},
    "Gather": ANY, "Gemm": {F}, "Greater": {F, I64, I32}, "Identity": ANY, "MatMul": {F},
    "Max": {F, I64, I32}, "MaxPool": {F, U8}, "Mul": {F, I64, I32}, "Pad": {F, B},
    "Pow": {F, I64, I32}, "Reciprocal": {F}, "ReduceMean": {F, I32}, "ReduceProd": {F, I32},
    "ReduceSum": {F, I64, I32}, "Relu": {F}, "Reshape": ANY, "Resize": {F, I32, U8},
    "ScatterElements": ANY, "Shape": ANY, "Size": ANY, "Slice": ANY, "Sub": {F, I64, I32},
    "Sum": {F}, "Tile": {F, I64, I32}, "Transpose": ANY, "Where": {B},
    # the optimiser's step graphs
    "Abs": {F, I64, I32}, "And": {B}, "Clip": {F, I64, U8},
    "GreaterOrEqual": {F, I64, I32}, "Less": {F, I64, I32}, "LessOrEqual": {F, I64, I32},
    "Neg": {F, I64, I32}, "Not": {B}, "Or": {B}, "ReduceMax": {F, I64, I32}, "Sqrt": {F},
    "Unsqueeze": ANY,
}
NAMES = {1: F, 2: U8, 6: I32, 7: I64, 9: B}


def _dtypes(model: onnx.ModelProto) -> dict[str, str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        out[v.name] = NAMES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
    for t in inferred.graph.initializer:
        out[t.name] = NAMES.get(t.data_type, str(t.data_type))
    return out


def off_the_gpu(model: onnx.ModelProto) -> list[str]:
    """Nodes without a CUDA kernel for their input type, and shape arithmetic in int64
    (which would run on the host, between device kernels)."""
    types = _dtypes(model)
    out = []
    for node in model.graph.node:
        t = types.get(node.input[0], "?")
        if t not in CUDA_KERNELS.get(node.op_type, set()) or (
                t == I64 and node.op_type in ("Add", "Sub", "Mul", "Div", "Concat")):
            out.append(f"{node.op_type}({t}) {node.name}")
    return out


@pytest.mark.parametrize("name, model, io", GRAPHS, ids=IDS)
def test_every_exported_graph_uses_only_ops_with_cuda_kernels(name, model, io):
    """Loss graphs (max, avg, guided), features, window and step graphs alike."""
    assert not off_the_gpu(model)


def test_the_check_catches_shape_arithmetic():
    """The earlier max-pool gradient sized its zeros with ReduceProd(Shape(x)): flagged."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ReduceProd", ["s"], ["n"], keepdims=1),
             helper.make_node("ConstantOfShape", ["n"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert off_the_gpu(model) == ["ReduceProd(int64) "]
