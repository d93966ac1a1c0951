"""Will it fit? Peak memory of a run, estimated before it starts.

Calibrated on the 2-core CPU machine this project is built on (onnxruntime 1.32, default
layers, max pooling) by ``scripts/bench_memory.py``: the peak resident memory of a whole
``nst stylize`` run grows linearly with the pixels evaluated —

    peak_MB ≈ BASE_MB + (PER_MPX_MB + HISTORY_MB · history) · megapixels

where megapixels is the larger of the output's and the (largest) style image's pixel count
(the style's features are computed once, before the run). The calibration runs made 2
iterations; L-BFGS keeps ``history`` pairs of float64 vectors (2 × 3 × 8 bytes per pixel per
pair) once it has run that long — the term that a 40-iteration 1024×768 run showed missing
(measured 3412 MB: the formula gives 3312 with it, 2935 without). See the README's table.
"""

from __future__ import annotations

import math

BASE_MB = 300.0
PER_MPX_MB = 3350.0
HISTORY_MB = 48.0  # per megapixel per L-BFGS pair
REGION_MB = 390.0  # per megapixel per --masks region: F⊙T_r at every style layer (measured:
#                    2 regions at 512×384 peaked at 1175 MB against 1023 MB without masks)
HEADROOM = 0.9  # refuse above 90% of what is available


def estimate_peak_mb(megapixels: float, history: int = 10, regions: int = 0) -> float:
    return BASE_MB + (PER_MPX_MB + HISTORY_MB * history + REGION_MB * regions) * megapixels


def available_mb() -> float | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def largest_side(budget_mb: float, aspect: float, history: int = 10, regions: int = 0) -> int:
    """Longest side (px) whose estimate stays within ``budget_mb``; aspect = short/long ≤ 1."""
    mpx = max(budget_mb - BASE_MB, 0.0) / (PER_MPX_MB + HISTORY_MB * history + REGION_MB * regions)
    return int(math.sqrt(mpx * 1e6 / max(aspect, 1e-6)))


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (VmHWM, Linux); None where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f
                         if line.startswith("VmHWM")), None)
    except OSError:
        return None
