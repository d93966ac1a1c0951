"""Will it fit? Peak memory of a run, estimated before it starts.

Calibrated on the 2-core CPU machine this project is built on (onnxruntime 1.32, default
layers, max pooling) by ``scripts/bench_memory.py``: the peak resident memory of a whole
``nst stylize`` run grows linearly with the pixels evaluated —

    peak_MB ≈ BASE_MB + PER_MPX_MB · megapixels

where megapixels is the larger of the output's and the (largest) style image's pixel count
(the style's features are computed once, before the run). See the README's table.
"""

from __future__ import annotations

import math

BASE_MB = 300.0
PER_MPX_MB = 3350.0
HEADROOM = 0.9  # refuse above 90% of what is available


def estimate_peak_mb(megapixels: float) -> float:
    return BASE_MB + PER_MPX_MB * megapixels


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


def largest_side(budget_mb: float, aspect: float) -> int:
    """Longest side (px) whose estimate stays within ``budget_mb``; aspect = short/long ≤ 1."""
    mpx = max(budget_mb - BASE_MB, 0.0) / PER_MPX_MB
    return int(math.sqrt(mpx * 1e6 / max(aspect, 1e-6)))
