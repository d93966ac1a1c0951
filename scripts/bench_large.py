"""Wall time and peak memory of one `nst stylize` run with defaults (issue 5: 1024 px in
≤ 10 minutes on the 2-core machine).

Runs the installed command in a child process and reads its peak resident memory from the
OS (getrusage of the children), so the number is the whole process's, not an estimate.

    python scripts/bench_large.py --size 1024 -o large.png
"""

from __future__ import annotations

import argparse
import json

import _bench  # paths, images folder, BLAS threads

ROOT = _bench.ROOT
SHARED = _bench.images_dir()  # $NST_ONNX_IMAGES, else examples/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    big = SHARED / "tubingen.jpg"
    ap.add_argument("--content", default=str(big if big.exists() else ROOT / "examples/tubingen.jpg"))
    ap.add_argument("--style", default=str(SHARED / "starry_night.jpg" if big.exists()
                                           else ROOT / "examples/starry_night.jpg"))
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("-o", "--output", default="large.png")
    ap.add_argument("extra", nargs="*", help="more nst stylize options (after --)")
    args = ap.parse_args()
    args_nst = ["stylize", args.content, args.style, "-o", args.output, "--size",
                str(args.size), *args.extra]
    summary, wall, peak_mb = _bench.run_nst(args_nst)
    cmd = ["nst", *args_nst]
    print(json.dumps({"command": " ".join(cmd), "cpu": _bench.cpu_model(), "wall_seconds": round(wall, 1),
                      "peak_rss_mb": round(peak_mb), "estimated_peak_mb":
                      summary.get("memory", {}).get("estimated_peak_mb"),
                      "scales": [{k: s[k] for k in ("size", "shape", "iterations", "seconds",
                                                     "initial_loss", "final_loss")}
                                 for s in summary.get("scales", [])],
                      "final_loss": summary["final_loss"]}, indent=2))


if __name__ == "__main__":
    main()
