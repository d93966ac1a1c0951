"""onnxruntime sessions for the exported graphs: providers, threads, targets bound once.

``Evaluator`` is the hot path: one call runs the loss-and-gradient graph on an image.
On CPU the fixed inputs (targets, weights) are passed as numpy arrays that onnxruntime
reads in place; on CUDA they are copied to the device once and bound with I/O binding, so
each evaluation moves only the image in and the gradient out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import BadInput

DEVICES = ("auto", "cpu", "cuda")


def physical_cores() -> int:
    """Physical cores (threads beyond them slow convolution down), at least 1."""
    try:
        with open("/proc/cpuinfo") as f:
            pairs = set()
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    pairs.add((phys, core))
            if pairs:
                return max(1, min(len(pairs), len(os.sched_getaffinity(0))))
    except (OSError, AttributeError):
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when onnxruntime-gpu sees a GPU, else 'cpu'."""
    if device not in DEVICES:
        raise BadInput(f"unknown device {device!r}: use auto, cpu or cuda")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise BadInput("--device cuda: onnxruntime has no CUDA provider here; "
                       "install onnxruntime-gpu (pip install 'nst-onnx[gpu]') or use --device cpu")
    return "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"


def make_session(model: str | Path | bytes, device: str = "cpu",
                 threads: int | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Measured at 512² on 2 cores (scripts/bench_eval.py): node-index order frees each
    # activation right after its last forward use (lower peak than the default DFS order);
    # the memory-pattern planner over-reserves (+700 MB peak) for ~10% speed, so it is off.
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    so.enable_mem_pattern = False
    # The default CPU arena grows by powers of two (+170 MB peak at 512²); a shared arena
    # that grows by what is asked keeps the speed and not the slack.
    _register_cpu_arena()
    so.add_session_config_entry("session.use_env_allocators", "1")
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda"
                 else ["CPUExecutionProvider"])
    src = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(src, so, providers=providers)
    release_free_memory()
    return session


_ARENA_REGISTERED = False


def _register_cpu_arena() -> None:
    """Once per process: a CPU arena with extend strategy 'same as requested'."""
    global _ARENA_REGISTERED
    if _ARENA_REGISTERED:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                             ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
    except Exception:  # already registered by the embedding program: use theirs
        pass
    _ARENA_REGISTERED = True


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; a no-op elsewhere).

    Building a session folds the weights (dequantise, transpose, flip) through temporary
    copies; glibc keeps those pages, so without this the process holds ~250 MB it never uses.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Terms:
    """One evaluation: total loss, gradient (1, 3, H, W) float32, and each named term."""

    loss: float
    grad: np.ndarray
    terms: dict[str, float]


class Evaluator:
    """Loss and gradient at an image, with the targets and weights fixed."""

    def __init__(self, session: ort.InferenceSession, fixed: dict[str, np.ndarray],
                 device: str = "cpu"):
        self.session = session
        self.device = device
        self.output_names = [o.name for o in session.get_outputs()]
        self.fixed = {k: np.asarray(v, dtype=np.float32, order="C") for k, v in fixed.items()}
        self._binding = None
        if device == "cuda":
            self._binding = session.io_binding()
            self._device_fixed = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0)
                                  for k, v in self.fixed.items()}
            for k, v in self._device_fixed.items():
                self._binding.bind_ortvalue_input(k, v)

    def __call__(self, image: np.ndarray) -> Terms:
        x = np.ascontiguousarray(image, dtype=np.float32)
        if self._binding is None:
            outs = self.session.run(self.output_names, {"image": x, **self.fixed})
        else:
            b = self._binding
            b.bind_cpu_input("image", x)
            for name in self.output_names:
                b.bind_output(name, "cpu")
            self.session.run_with_iobinding(b)
            outs = b.copy_outputs_to_cpu()
        named = dict(zip(self.output_names, outs))
        terms = {k: float(v) for k, v in named.items() if k.endswith("_loss") or "_loss_" in k}
        return Terms(float(named["loss"]), named["grad"], terms)
