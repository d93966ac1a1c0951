"""What fits where, as the memory planner estimates it: the README's table, regenerated.

For each amount of free memory, the largest longest side (4:3, on the 16 px grid, default
layers and settings) that the planner (``nst_onnx.run.resources``) runs: untiled with the
default history; in tiles of 1024 px or more with 10 pairs or more; and at all (any tiles,
the history lowered as far as the planner goes). Estimates only — no image is made.

    python scripts/fits.py
"""

from __future__ import annotations

import argparse

from nst_onnx.config import LossSpec, RunOptions
from nst_onnx.run.resources import HEADROOM, SMALL_TILE, _plan

ROWS = (("16 GB of RAM", "cpu", 16 * 1024), ("23 GB of RAM", "cpu", 23 * 1024),
        ("60 GB of RAM", "cpu", 60 * 1024),
        ("a 24 GB card (`--gpu-mem-limit 20000`)", "cuda", 20000),
        ("an 80 GB H100", "cuda", 78 * 1024), ("the H200 (139 GB)", "cuda", 139 * 1024))


def plan(device: str, free_mb: float, side: int) -> tuple[int | None, float, int | None]:
    h = side * 3 // 4 // 16 * 16
    return _plan(device, LossSpec(), (h, side), h * side, 0, RunOptions(), free_mb,
                 lambda _: None)


def largest(device: str, free_mb: float, ok) -> int:
    """The largest side (16 px steps, ≤ 32768) whose plan fits ``free_mb`` and pleases ``ok``:
    sides are searched from below while they keep fitting."""
    best, side = 0, 256
    while side <= 32768:
        tile, est, pairs = plan(device, free_mb, side)
        if est <= HEADROOM * free_mb and ok(tile, pairs):
            best = side
        elif best:
            break
        side += 16
    return best


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print("| free memory | untiled | tiles ≥ 1024 px, history ≥ 10 | at the limit |")
    print("|---|---|---|---|")
    for name, device, free in ROWS:
        untiled = largest(device, free, lambda t, p: t is None and p is None)
        big = largest(device, free, lambda t, p: (t is None or t >= SMALL_TILE)
                      and (p is None or p >= 10))
        limit = largest(device, free, lambda t, p: True)
        print(f"| {name} | {untiled} px | {big} px | {limit} px |")


if __name__ == "__main__":
    main()
