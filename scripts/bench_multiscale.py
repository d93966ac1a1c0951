"""Coarse-to-fine against a single-scale run, on the same final-size objective.

Runs (1) a single-scale run at --size for --single-iterations and (2) a coarse-to-fine run
(--scales, --iterations), both on the bundled examples from the content image, and prints
when (wall time, including the coarse scales) the coarse-to-fine run first reaches the
single-scale run's final loss, and for a ladder of loss levels when each run first got
there — the loss is measured on the same objective, the final scale's.

    python scripts/bench_multiscale.py --size 512 --single-iterations 500 \\
        --scales 256,512 --iterations 200,300
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the `nst` command does

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from nst_onnx import StyleTransfer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--content", default=str(ROOT / "examples/tubingen.jpg"))
    ap.add_argument("--style", default=str(ROOT / "examples/starry_night.jpg"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--single-iterations", type=int, default=500)
    ap.add_argument("--scales", default="256,512")
    ap.add_argument("--iterations", default="200,300")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--optimizer", default="lbfgs", help="lbfgs (scipy L-BFGS-B: the figures "
                    "in docs/benchmarks.md were measured with it), lbfgs-onnx or adam")
    ap.add_argument("--models", default=None)
    ap.add_argument("-o", "--output", default=None, help="save both images: OUT.single.png …")
    ap.add_argument("--single-result", nargs=2, type=float, metavar=("LOSS", "SECONDS"),
                    help="reuse a measured single-scale run instead of running it again")
    args = ap.parse_args()
    st = StyleTransfer(device="cpu", threads=args.threads, models_dir=args.models)

    def trace():
        t0 = time.perf_counter()
        track = []

        def cb(p):
            track.append((time.perf_counter() - t0, p.iteration, p.loss))
        return track, cb

    single = None
    if args.single_result:
        target, t_single = args.single_result
    else:
        t0 = time.perf_counter()
        track1, cb1 = trace()
        single = st.transfer(args.content, args.style, size=args.size,
                             iterations=args.single_iterations, scales=[args.size],
                             optimizer=args.optimizer, callback=cb1)
        t_single = time.perf_counter() - t0
        target = single.optimize.loss

    sizes = [int(v) for v in args.scales.split(",")]
    its = [int(v) for v in args.iterations.split(",")]
    track2, cb2 = trace()
    t0 = time.perf_counter()
    multi = st.transfer(args.content, args.style, size=sizes[-1], iterations=its, scales=sizes,
                        optimizer=args.optimizer, callback=cb2)
    t_multi = time.perf_counter() - t0
    fine_start = sum(its[:-1])
    reached = next(((t, i) for t, i, loss in track2 if i > fine_start and loss <= target), None)
    result = {
        "size": args.size,
        "single": {"iterations": args.single_iterations, "seconds": t_single,
                   "final_loss": target, "reused": single is None},
        "coarse_to_fine": {"scales": sizes, "iterations": its, "seconds": t_multi,
                           "final_loss": multi.optimize.loss,
                           "per_scale": multi.scales},
        "loss_ratio": multi.optimize.loss / target,
        "time_ratio": t_multi / t_single,
        "reached_single_loss_at": None if reached is None else
        {"seconds": reached[0], "iteration": reached[1], "fraction_of_single_time":
         reached[0] / t_single},
    }
    if single is not None:
        def first(track, level, after=0):
            return next((round(t) for t, i, loss in track if i > after and loss <= level), None)
        result["seconds_to_reach"] = [
            {"loss": level, "single": first(track1, level),
             "coarse_to_fine": first(track2, level, fine_start)}
            for level in np.geomspace(track1[len(track1) // 10][2], target * 1.0001, 6)]
    print(json.dumps(result, indent=2, default=float))
    if args.output:
        if single is not None:
            single.image.save(f"{args.output}.single.png")
        multi.image.save(f"{args.output}.multiscale.png")


if __name__ == "__main__":
    main()
