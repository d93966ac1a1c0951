"""What the benchmark scripts share: the repository's paths, the images folder, BLAS set-up,
the CPU's name, and running ``nst … --json`` in a child process with its own peak resident
memory.

Import it first (``import _bench``: scripts/ is on sys.path when a script runs): it sets
OpenBLAS to one thread, as the ``nst`` command does, before numpy loads.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as nst_onnx.cli does, before numpy

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def images_dir(given: str | None = None) -> Path:
    """The folder of real photos and paintings: ``--images``, else $NST_ONNX_IMAGES, else the
    bundled examples (no path outside the repository is assumed)."""
    d = Path(given or os.environ.get("NST_ONNX_IMAGES") or EXAMPLES)
    if not d.is_dir():
        sys.exit(f"images folder {d} does not exist (--images or NST_ONNX_IMAGES)")
    return d


def cpu_model() -> str:
    """The CPU's model name (every CPU figure names it), or the best guess there is."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_nst(args: list[str], env: dict | None = None) -> tuple[dict, float, float]:
    """``nst ARGS --json`` in a fresh process → (its JSON summary, wall seconds, that child's
    own peak RSS in MB, from ``wait4``). One process per variant: nothing one run allocated
    is left to the next. Exits with nst's one-line error when it fails."""
    import tempfile

    cmd = [sys.executable, "-m", "nst_onnx.cli", *args, "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if child.returncode != 0:
        sys.exit(f"nst {' '.join(args)} failed ({child.returncode}): {stderr.strip()}")
    return json.loads(stdout.strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024
