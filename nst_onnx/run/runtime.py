"""onnxruntime sessions for the exported graphs: devices, providers, threads, memory."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from ..config import DEVICES
from ..errors import BadInput


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
