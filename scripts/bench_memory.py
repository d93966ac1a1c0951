"""Peak memory of whole `nst stylize` runs by size: the calibration behind nst_onnx.run.resources.

Each run is a fresh process (2 iterations on the bundled examples); its peak RSS comes from
wait4. Prints measured vs estimated, and a least-squares fit to paste into resources.py.

    python scripts/bench_memory.py --sizes 256 512 768 1024
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from nst_onnx.run.resources import estimate_peak_mb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 768, 1024])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            out = Path(tmp) / f"m{size}.png"
            cmd = [sys.executable, "-m", "nst_onnx.cli", "stylize",
                   str(ROOT / "examples/tubingen.jpg"), str(ROOT / "examples/starry_night.jpg"),
                   "-o", str(out), "--size", str(size), "--iterations", "2", "--json",
                   "--threads", str(args.threads), "--force"]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            stdout = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
            if status != 0:
                raise SystemExit(f"run at {size} failed: {stdout}")
            s = json.loads(stdout.strip().splitlines()[-1])
            mpx = s["memory"]["megapixels"]
            rows.append((size, mpx, usage.ru_maxrss / 1024))
    print("| --size | Mpx | peak RSS MB | estimate MB |")
    print("|---|---|---|---|")
    for size, mpx, mb in rows:
        print(f"| {size} | {mpx:.3f} | {mb:.0f} | {estimate_peak_mb(mpx):.0f} |")
    a = np.array([[1.0, m] for _, m, _ in rows])
    y = np.array([mb for _, _, mb in rows])
    base, per = np.linalg.lstsq(a, y, rcond=None)[0]
    print(f"\nfit: BASE_MB = {base:.0f}, PER_MPX_MB = {per:.0f}")


if __name__ == "__main__":
    main()
