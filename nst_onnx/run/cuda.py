"""CUDA's failures in words: why the provider did not load (one line naming the cause and
the fix, from onnxruntime's log, the driver and the installed runtimes) and the GPU's
out-of-memory errors as :class:`DeviceOutOfMemory`. No sessions are made here.

onnxruntime quietly builds a CPU session when the CUDA provider's libraries (cuBLAS,
cuDNN, the CUDA runtime) or the driver are missing, and prints its complaint to the
terminal; :mod:`.sessions` captures that log and :func:`diagnose_cuda` condenses it.
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

from ..errors import BadInput

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
GPU_INSTALL = ("pip uninstall -y onnxruntime onnxruntime-gpu && NST_ONNX_RUNTIME=cuda pip "
               "install . (in the nst-onnx folder; README, GPU)")

RUNTIME_DISTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-rocm",
                 "onnxruntime-directml", "onnxruntime-qnn", "onnxruntime-training")

class DeviceError(BadInput):
    """The device asked for cannot be used here (exit 2, one line naming the cause)."""

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
def preload_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries of NVIDIA's pip wheels (``[cuda,cudnn]`` extras)
    before the first CUDA session (onnxruntime ≥ 1.21); harmless where they are absent.
    Returns what it printed (it names the libraries it could not load)."""
    if not hasattr(ort, "preload_dlls"):
        return ""
    with captured_output() as out:
        try:
            ort.preload_dlls()
        except Exception as e:  # a missing library is diagnosed by the probe session
            print(e)
    return "".join(out)

@contextlib.contextmanager
def captured_output():
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

_OOM = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation",
        "cuda_error_out_of_memory", "bfcarena", "available memory")

def is_out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return any(k in text for k in _OOM)

class DeviceOutOfMemory(BadInput):
    """The GPU ran out of memory (exit 2; the best image so far is kept)."""

@contextlib.contextmanager
def out_of_memory_as(device: str, message: str, cpu_too: bool = False):
    """Inside: a CUDA out-of-memory error from onnxruntime (and with ``cpu_too`` the CPU
    provider's allocation failure) becomes :class:`DeviceOutOfMemory` with ``message`` (exit
    2; ``{e}`` in it stands for onnxruntime's error); every other error passes unchanged."""
    try:
        yield
    except Exception as e:
        if (device == "cuda" or cpu_too) and is_out_of_memory(e):
            raise DeviceOutOfMemory(message.format(e=e)) from None
        raise
