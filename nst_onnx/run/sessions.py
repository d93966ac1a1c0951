"""onnxruntime sessions for the exported graphs: providers, threads, arenas.

CUDA sessions run exact float32 (``use_tf32=0`` unless asked), search cuDNN's convolution
algorithms exhaustively once per shape, draw from one device arena shared by the process's
sessions that grows by what is asked (not powers of two) and may be capped
(``gpu_mem_limit``), and use one non-spinning host thread, so they do not compete with the
host optimiser. Every session's providers are checked: CUDA asked for and not got is a
:class:`~.cuda.DeviceError` naming the cause.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import onnxruntime as ort

from .cuda import (
    CPU,
    CUDA,
    DeviceError,
    captured_output,
    diagnose_cuda,
    out_of_memory_as,
    preload_cuda_libraries,
)


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

def quiet_logs(debug: bool = False) -> None:
    """onnxruntime's own log stays off the terminal unless --debug (errors still raise)."""
    ort.set_default_logger_severity(1 if debug else 4)

def cuda_provider_options(tf32: bool = False, gpu_mem_limit_mb: float | None = None) -> dict:
    opts = {"device_id": "0", "use_tf32": "1" if tf32 else "0",
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"}
    if gpu_mem_limit_mb:
        opts["gpu_mem_limit"] = str(int(gpu_mem_limit_mb * 2 ** 20))
    return opts

def _session_options(device: str, threads: int | None, debug: bool,
                     spinning: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # 4 (fatal only): a failing node's ERROR line would reach the terminal beside our one
    # line (seen on a GPU: a red arena message before 'the GPU ran out of memory'); the
    # error itself still raises
    so.log_severity_level = 1 if debug else 4
    so.inter_op_num_threads = 1
    # node-index order frees each activation right after its last forward use; the
    # memory-pattern planner over-reserves (docs/design.md has the measurement)
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    so.enable_mem_pattern = False
    if device == "cuda":  # the GPU computes; one quiet host thread feeds it
        so.intra_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        so.intra_op_num_threads = threads or physical_cores()
        if not spinning:  # short graphs between long ones: idle threads must not spin
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # a shared arena that grows by what is asked (the default doubles: +170 MB at 512²)
        _register_cpu_arena()
        so.add_session_config_entry("session.use_env_allocators", "1")
    return so

def make_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 *, tf32: bool = False, gpu_mem_limit_mb: float | None = None,
                 debug: bool = False, spinning: bool = True, shared_arena: bool = True,
                 profile_prefix: str | None = None) -> ort.InferenceSession:
    """A session on ``device`` ('cpu' or 'cuda'); raises :class:`DeviceError` when CUDA was
    asked for and the session did not get it. ``spinning=False`` for the optimiser's short
    step graphs: their idle threads would otherwise spin on the cores the loss graph needs
    and slow its evaluations (docs/design.md). ``shared_arena=False``: a CUDA
    session with its own device arena (the probe, which must not touch the shared one)."""
    quiet_logs(debug)
    log: list[str] = []
    cuda_options = cuda_provider_options(tf32, gpu_mem_limit_mb) if device == "cuda" else None
    if cuda_options is not None:
        log.append(preload_cuda_libraries())
    so = _session_options(device, threads, debug, spinning)
    if profile_prefix:  # onnxruntime's profiler: per-node times, written beside the prefix
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    providers: list = [CPU] if cuda_options is None else [(CUDA, cuda_options), CPU]
    src = model if isinstance(model, bytes) else str(model)
    with (contextlib.nullcontext([]) if debug else captured_output()) as said:
        if cuda_options is not None and shared_arena and _register_cuda_arena(cuda_options):
            so.add_session_config_entry("session.use_env_allocators", "1")
        with out_of_memory_as(device, "the GPU ran out of memory loading the model ({e})"):
            session = ort.InferenceSession(src, so, providers=providers)
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise DeviceError(diagnose_cuda("".join(log + said)))
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

_CUDA_ARENA: dict | None = None  # the options the shared device arena was made with

def _register_cuda_arena(options: dict) -> bool:
    """Once per process: one device arena shared by every CUDA session (features, loss and
    the optimiser's step graphs), growing by what is asked, capped by ``gpu_mem_limit``.
    Each session would otherwise keep its own arena holding its own peak, and a device
    optimiser's step sessions would hold theirs beside the loss graph's (README, GPU: the
    memory measured both ways). False where onnxruntime cannot make one, where this session
    asks another memory limit than the arena was made with, or with
    NST_ONNX_CUDA_SHARED_ARENA=0: the session then keeps its own arena."""
    global _CUDA_ARENA
    if os.environ.get("NST_ONNX_CUDA_SHARED_ARENA", "1") == "0":
        return False
    if _CUDA_ARENA is None:
        limit = int(options.get("gpu_mem_limit", 0))
        info = ort.OrtMemoryInfo("Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator_v2(CUDA, info, options,
                                                 ort.OrtArenaCfg(limit, 1, -1, -1))
            _CUDA_ARENA = dict(options)
        except Exception:  # older onnxruntime, or registered by the embedding program
            _CUDA_ARENA = {}
    return bool(_CUDA_ARENA) and \
        _CUDA_ARENA.get("gpu_mem_limit") == options.get("gpu_mem_limit")

def shrinking(device: str) -> ort.RunOptions | None:
    """Run options for the optimiser's step graphs on the CPU: the shared arena hands its
    wholly free regions back to the OS after each step. Their tensors are image-sized (the
    L-BFGS update makes new (m, n) histories while the old ones are held), and kept, the
    arena's regions of those sizes sat beside the tiled windows' activations, splitting
    into each other's leftovers: a peak of both plus the gaps. The windows then take their
    pages again once per evaluation, not once per window. None on a GPU, where freeing
    and taking device memory back each step costs more than it saves."""
    if device != "cpu":
        return None
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options

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
