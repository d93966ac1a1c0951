"""A stylize run killed (SIGKILL) around iteration K and resumed with --resume, against the
same run uninterrupted: both must end at the requested iteration count; the resumed one's
final loss is compared with the uninterrupted one's (issue 11's target: ≤ 1.03×).

    python scripts/bench_resume.py --size 512 --iterations 150 --kill-at 60
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _bench  # paths, images folder, BLAS threads

ROOT = _bench.ROOT
SHARED = _bench.images_dir()  # $NST_ONNX_IMAGES, else examples/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--kill-at", type=int, default=60)
    ap.add_argument("--optimizer", default="lbfgs-onnx")
    args = ap.parse_args()
    src = SHARED if SHARED.is_dir() else ROOT / "examples"
    work = Path(tempfile.mkdtemp(prefix="nst-resume-"))
    base = [sys.executable, "-m", "nst_onnx.cli", "stylize", str(src / "tubingen.jpg"),
            str(src / "starry_night.jpg"), "--size", str(args.size), "--iterations",
            str(args.iterations), "--optimizer", args.optimizer, "--checkpoint-every", "10"]

    whole = json.loads(subprocess.run([*base, "-o", str(work / "whole.png"), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    out = work / "resumed.png"
    proc = subprocess.Popen([*base, "-o", str(out)], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="200"))
    killed_at = None
    for line in proc.stderr:  # progress lines: "[####…] 12/150 loss …"
        parts = [p for p in line.split() if "/" in p and p.split("/")[0].isdigit()]
        if parts and int(parts[0].split("/")[0]) >= args.kill_at:
            killed_at = int(parts[0].split("/")[0])
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    time.sleep(0.5)
    resumed = json.loads(subprocess.run([*base, "-o", str(out), "--json", "--resume"],
                                        capture_output=True, text=True, check=True).stdout)
    report = {"size": args.size, "iterations": args.iterations, "optimizer": args.optimizer,
              "killed_near_iteration": killed_at,
              "resumed_from_iteration": resumed.get("resumed", {}).get("iterations_before"),
              "uninterrupted": {k: whole[k] for k in ("iterations", "final_loss", "seconds")},
              "resumed": {k: resumed[k] for k in ("iterations", "final_loss", "seconds")},
              "loss_ratio": resumed["final_loss"] / whole["final_loss"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
