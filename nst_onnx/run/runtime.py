"""onnxruntime sessions for the exported graphs: devices, providers, threads.

CUDA is used only when it really loads. onnxruntime quietly builds a CPU session when the
CUDA provider's libraries (cuBLAS, cuDNN, the CUDA runtime) or the driver are missing, and
prints its complaint to the terminal; here every session's providers are checked, a probe
session's log is captured and condensed into one line that names the cause, and
``--device auto`` falls back to the CPU with that line as a notice.

CUDA sessions run exact float32 (``use_tf32=0`` unless asked), search cuDNN's convolution
algorithms exhaustively once per shape, draw from one device arena shared by the process's
sessions that grows by what is asked (not powers of two) and may be capped
(``gpu_mem_limit``), and use one non-spinning host thread, so they do not compete with the
host optimiser.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

from ..config import DEVICES
from ..errors import BadInput

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
GPU_INSTALL = ("pip uninstall -y onnxruntime onnxruntime-gpu && NST_ONNX_RUNTIME=cuda pip "
               "install . (in the nst-onnx folder; README, GPU)")
RUNTIME_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-rocm",
                 "onnxruntime-directml", "onnxruntime-qnn", "onnxruntime-training")


class DeviceError(BadInput):
    """The device asked for cannot be used here (exit 2, one line naming the cause)."""


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


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed here; more than one overwrite each other's
    files (they all install the same ``onnxruntime`` module)."""
    from importlib import metadata

    found = []
    for name in RUNTIME_DISTS:
        try:
            metadata.distribution(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def runtime_clash() -> str | None:
    """One line with the fix when several onnxruntime builds are installed, else None."""
    found = installed_runtimes()
    if len(found) < 2:
        return None
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in found else found[-1]
    extra = "[cuda,cudnn]" if keep == "onnxruntime-gpu" else ""
    return (f"{' and '.join(found)} are all installed and overwrite each other's files: fix "
            f"with `pip uninstall -y {' '.join(found)} && pip install \"{keep}{extra}\"`")


@functools.lru_cache(maxsize=1)
def _preload() -> str:
    """Load the CUDA and cuDNN libraries of NVIDIA's pip wheels (``[cuda,cudnn]`` extras)
    before the first CUDA session (onnxruntime ≥ 1.21); harmless where they are absent.
    Returns what it printed (it names the libraries it could not load)."""
    if not hasattr(ort, "preload_dlls"):
        return ""
    with _captured_output() as out:
        try:
            ort.preload_dlls()
        except Exception as e:  # a missing library is diagnosed by the probe session
            print(e)
    return "".join(out)


@contextlib.contextmanager
def _captured_output():
    """What Python and C++ code write to stdout and stderr while inside, collected instead
    of shown (onnxruntime prints its CUDA loading failures; ``--json`` keeps stdout clean)."""
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as tmp:
        for fd in saved:
            os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


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
    # Measured at 512² on 2 cores (docs/design.md): node-index order frees each activation
    # right after its last forward use; the memory-pattern planner over-reserves (+700 MB).
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
    (measured: evaluations 38% slower at 256² on 2 cores). ``shared_arena=False``: a CUDA
    session with its own device arena (the probe, which must not touch the shared one)."""
    log: list[str] = []
    cuda_options = cuda_provider_options(tf32, gpu_mem_limit_mb) if device == "cuda" else None
    if cuda_options is not None:
        log.append(_preload())
    so = _session_options(device, threads, debug, spinning)
    if profile_prefix:  # onnxruntime's profiler: per-node times, written beside the prefix
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    providers: list = [CPU] if cuda_options is None else [(CUDA, cuda_options), CPU]
    src = model if isinstance(model, bytes) else str(model)
    with (contextlib.nullcontext([]) if debug else _captured_output()) as said:
        if cuda_options is not None and shared_arena and _register_cuda_arena(cuda_options):
            so.add_session_config_entry("session.use_env_allocators", "1")
        with out_of_memory_as(device, "the GPU ran out of memory loading the model ({e})"):
            session = ort.InferenceSession(src, so, providers=providers)
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise DeviceError(diagnose_cuda("".join(log + said)))
    release_free_memory()
    return session


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


def diagnose_cuda(log: str) -> str:
    """onnxruntime's log of a failed CUDA provider load → one line: the cause and the fix."""
    clash = runtime_clash()
    if clash:
        return clash
    missing = list(dict.fromkeys(re.findall(r"(lib[\w.+-]+?\.so(?:\.\d+)*)\S*: cannot open "
                                            r"shared object file", log)))
    libs = f"the CUDA provider could not load {', '.join(missing)}" if missing else ""
    driver = nvidia_driver_version()
    need = _driver_needed()
    if driver is None and not _libcuda_loads():
        return ("CUDA is not usable: no NVIDIA GPU driver here (no /proc/driver/nvidia, "
                "libcuda.so.1 does not load)" + (f" and {libs}" if libs else "")
                + "; without an NVIDIA GPU use --device cpu")
    if driver is not None and driver[0] < need[1]:
        return (f"CUDA is not usable: the NVIDIA driver {'.'.join(map(str, driver))} is older than "
                f"CUDA {need[0]} needs (≥ {need[1]}); update the driver, or install the CUDA 12 "
                f"build: NST_ONNX_RUNTIME=cuda12 pip install .")
    if missing:
        return (f"CUDA is not usable: {libs}; install NVIDIA's libraries with the GPU build: "
                f"{GPU_INSTALL}")
    low = log.lower()
    if "no cuda-capable device" in low or "cuda failure 100" in low or "error 100" in low:
        return "CUDA is not usable: no CUDA-capable GPU is visible (CUDA_VISIBLE_DEVICES?)"
    if "driver version is insufficient" in low or "error 35" in low:
        return "CUDA is not usable: the NVIDIA driver is too old for this onnxruntime-gpu build"
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if "fail" in ln.lower() or "error" in ln.lower()),
                lines[-1] if lines else "no message")
    last = re.sub(r"^\S*\s*\[[EW]:onnxruntime:[^\]]*\]\s*", "", last)
    return f"CUDA is not usable: {last[:200]}"


def nvidia_driver_version() -> tuple[int, ...] | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+)\.(\d+)", text) or \
        re.search(r"\s(\d{3,})\.(\d+)(?:\.\d+)?\s", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _driver_needed() -> tuple[int, int]:
    """(CUDA major of this onnxruntime-gpu build, the Linux driver it needs)."""
    major = int(ort.__version__.split(".")[1]) if ort.__version__.startswith("1.") else 99
    return (13, 580) if major >= 27 else (12, 525)


def _libcuda_loads() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


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


_OOM = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation",
        "cuda_error_out_of_memory", "bfcarena", "available memory")


def is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return any(k in text for k in _OOM)


class DeviceOutOfMemory(BadInput):
    """The GPU ran out of memory (exit 2; the best image so far is kept)."""


@contextlib.contextmanager
def out_of_memory_as(device: str, message: str):
    """Inside: a CUDA out-of-memory error from onnxruntime becomes :class:`DeviceOutOfMemory`
    with ``message`` (exit 2; ``{e}`` in it stands for onnxruntime's error); every other
    error passes unchanged."""
    try:
        yield
    except Exception as e:
        if device == "cuda" and is_out_of_memory(e):
            raise DeviceOutOfMemory(message.format(e=e)) from None
        raise


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


quiet_logs()
