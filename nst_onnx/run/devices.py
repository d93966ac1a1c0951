"""Which device a run gets: CUDA only when it really loads (a probe session says so),
else the CPU — with a one-line notice for ``--device auto``, an error for ``--device cuda``.
"""

from __future__ import annotations

import functools

import onnxruntime as ort

from ..config import DEVICES
from ..errors import BadInput
from .cuda import CUDA, GPU_INSTALL, DeviceError, diagnose_cuda, installed_runtimes, runtime_clash
from .sessions import make_session


@functools.lru_cache(maxsize=4)
def cuda_problem(debug: bool = False) -> str | None:
    """Why CUDA cannot be used here (one line with the fix), or None when it works.

    Builds a one-node probe session on the CUDA provider and reads what onnxruntime said."""
    if CUDA not in ort.get_available_providers():
        clash = runtime_clash()
        return clash or (f"onnxruntime {ort.__version__} here is the CPU build (no CUDA "
                         f"provider); for the GPU: {GPU_INSTALL}")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    probe.ir_version = 8
    try:
        make_session(probe.SerializeToString(), "cuda", debug=debug, shared_arena=False)
    except DeviceError as e:
        return str(e)
    except Exception as e:  # onnxruntime raised instead of falling back
        return diagnose_cuda(str(e))
    return None

def resolve_device(device: str, debug: bool = False) -> tuple[str, str | None]:
    """('cuda' or 'cpu', a one-line notice when 'auto' could not use CUDA).

    ``cuda`` that cannot load raises :class:`DeviceError`; ``auto`` takes CUDA when it
    really works and the CPU otherwise (the notice says why, when a GPU build is installed).
    """
    if device not in DEVICES:
        raise BadInput(f"unknown device {device!r}: use auto, cpu or cuda")
    if device == "cpu":
        return "cpu", None
    problem = cuda_problem(debug)
    if problem is None:
        return "cuda", None
    if device == "cuda":
        raise DeviceError(f"--device cuda: {problem}")
    gpu_build = CUDA in ort.get_available_providers() or len(installed_runtimes()) > 1
    return "cpu", (f"running on the CPU: {problem}" if gpu_build else None)
