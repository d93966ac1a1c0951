"""Peak memory of whole `nst stylize` runs by size: the calibration behind nst_onnx.run.resources.

Each run is a fresh process on the bundled examples at one scale; its peak RSS comes from
wait4. Prints measured vs estimated, and a least-squares fit to paste into resources.py:
``BASE + PER_MPX · Mpx`` from one history, plus ``HISTORY · history · Mpx`` when several
histories are run (iterations must then exceed the largest history, so it is full).

    python scripts/bench_memory.py --sizes 256 512 768 1024 --optimizer lbfgs
    python scripts/bench_memory.py --optimizer lbfgs-onnx --histories 10 20 --iterations 25
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _bench  # paths, BLAS threads, nst --json with the child's peak RSS
import numpy as np

ROOT = _bench.ROOT


def peak(size: int, optimizer: str, history: int, iterations: int, threads: int,
         tmp: str) -> tuple[float, float]:
    """(megapixels, peak RSS MB) of one run in a fresh process."""
    summary, _, peak_mb = _bench.run_nst([
        "stylize", str(ROOT / "examples/tubingen.jpg"), str(ROOT / "examples/starry_night.jpg"),
        "-o", str(Path(tmp) / f"m{size}.png"), "--size", str(size), "--scales", "1",
        "--iterations", str(iterations), "--optimizer", optimizer, "--history", str(history),
        "--threads", str(threads), "--force"])
    return summary["memory"]["megapixels"], peak_mb


def main() -> None:
    from nst_onnx.run.resources import estimate_peak_mb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768, 1024])
    ap.add_argument("--optimizer", default="lbfgs-onnx")
    ap.add_argument("--histories", type=int, nargs="+", default=[20])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for history in args.histories:
            for size in args.sizes:
                mpx, mb = peak(size, args.optimizer, history, args.iterations, args.threads, tmp)
                rows.append((size, history, mpx, mb))
                print(json.dumps({"size": size, "history": history, "megapixels": mpx,
                                  "peak_mb": mb}), flush=True)
    print(f"\n{args.optimizer}, {args.iterations} iterations, {args.threads} threads\n")
    print("| --size | history | Mpx | peak RSS MB | estimate MB |")
    print("|---|---|---|---|---|")
    for size, history, mpx, mb in rows:
        est = estimate_peak_mb(mpx, history, optimizer=args.optimizer)
        print(f"| {size} | {history} | {mpx:.3f} | {mb:.0f} | {est:.0f} |")
    many = len(set(args.histories)) > 1
    a = np.array([[1.0, m] + ([m * h] if many else []) for _, h, m, _ in rows])
    fit = np.linalg.lstsq(a, np.array([mb for *_, mb in rows]), rcond=None)[0]
    print(f"\nfit for resources.CPU_MB: base {fit[0]:.0f}, per megapixel {fit[1]:.0f}"
          + (f", per megapixel per pair {fit[2]:.1f}" if many else ""))


if __name__ == "__main__":
    main()
