"""Benchmark one loss+gradient evaluation: nst-onnx (onnxruntime) against PyTorch.

Both run in worker processes of their own (so each has its own peak RSS), are warmed up,
then asked to evaluate in turn — interleaved, same image, same thread count — and the
median of the repeats is reported with the ratio onnx/torch and analytic GFLOP/s.

    python scripts/bench_eval.py --sizes 256 512 --repeats 7 --threads 2

PyTorch is optional and benchmark-only (`pip install torch==2.13.0`); without it only the
onnxruntime side is measured. ``--against TREE`` adds another checkout — an older commit,
say — whose own code exports its graphs and evaluates them (its bench_eval.py's worker), timed
in the same interleaved run (ratio: this tree's time over its; the graph format may differ):

    git worktree add /tmp/old HEAD~3
    python scripts/bench_eval.py --sizes 512 1024 --aspect 0.75 --against /tmp/old
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(kind: str, size: int, threads: int, weights_path: str | None,
           aspect: float = 1.0) -> None:
    """Set up one side, then evaluate each time the parent writes a line; report as JSON."""
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.weights import load_weights

    spec = LossSpec()
    weights = load_weights(weights_path, log=lambda m: print(m, file=sys.stderr))
    rng = np.random.default_rng(0)
    shape = (1, 3, round(size * aspect), size)
    content = rng.uniform(0, 255, shape).astype(np.float32)
    style = rng.uniform(0, 255, shape).astype(np.float32) ** 2 / 255
    x = rng.uniform(0, 255, shape).astype(np.float32)
    if kind.startswith("onnx"):
        import tempfile

        from nst_onnx.api import StyleTransfer
        from nst_onnx.graphs.export import export_model

        quiet = lambda m: print(m, file=sys.stderr)  # noqa: E731  (stdout carries the protocol)
        models = Path(tempfile.mkdtemp(prefix="nst-bench-"))
        export_model(spec, models, weights=weights, log=quiet)
        st = StyleTransfer(device="cpu", threads=threads, models_dir=models, log=quiet)
        u8 = lambda a: a[0].transpose(1, 2, 0).astype(np.uint8)  # noqa: E731
        problem = st.prepare(u8(content), u8(style), size=size)
        fn = lambda: problem.evaluate(x)  # noqa: E731
    else:
        from torch_reference import TorchLoss

        tl = TorchLoss(weights, spec, threads)
        tl.set_targets(content, style)
        fn = lambda: tl.loss_and_grad(x)  # noqa: E731
    fn()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t = time.perf_counter()
        fn()
        print(json.dumps({"t": time.perf_counter() - t}), flush=True)
    print(json.dumps({"rss_mb": peak_rss_mb()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--no-torch", action="store_true", help="measure onnxruntime only")
    ap.add_argument("--aspect", type=float, default=1.0, help="height / width (0.75: 4:3)")
    ap.add_argument("--against", action="append", default=[], metavar="TREE",
                    help="also time another checkout's graphs, run by its own code (repeatable)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.threads, args.weights, args.aspect)
        return

    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.networks import loss_flops

    try:
        import torch  # noqa: F401

        kinds = ["onnx"] + ([] if args.no_torch else ["torch"])
    except ImportError:
        print("(torch not installed: measuring onnxruntime only)")
        kinds = ["onnx"]
    kinds += [f"onnx@{Path(d).resolve()}" for d in args.against]  # run by TREE's bench_eval
    rows = []
    for size in args.sizes:
        procs = {}
        for k in kinds:
            script = Path(k.split("@", 1)[1]) / "scripts" / "bench_eval.py" if "@" in k else __file__
            cmd = [sys.executable, str(script), "--worker", k.split("@")[0], str(size),
                   "--threads", str(args.threads), "--aspect", str(args.aspect)] + \
                (["--weights", args.weights] if args.weights else [])
            procs[k] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)
            json.loads(procs[k].stdout.readline())  # one at a time: set-up does not overlap
        times = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for k in kinds:  # interleaved
                procs[k].stdin.write("run\n")
                times[k].append(json.loads(procs[k].stdout.readline())["t"])
        rss = {}
        for k in kinds:
            procs[k].stdin.write("quit\n")
            procs[k].stdin.flush()
            rss[k] = json.loads(procs[k].stdout.readline())["rss_mb"]
            procs[k].wait()
        flops = loss_flops(LossSpec(), round(size * args.aspect), size)
        row = {"size": f"{size}x{round(size * args.aspect)}", "gflop": flops / 1e9}
        for k in kinds:
            med = statistics.median(times[k])
            row[k] = {"median_s": med, "peak_rss_mb": rss[k], "gflops": flops / med / 1e9}
        base = "torch" if "torch" in row else kinds[-1] if len(kinds) > 1 else None
        for k in kinds:
            if base and k != base:  # against PyTorch, else this tree against --against
                row[f"{k} time_ratio"] = row[k]["median_s"] / row[base]["median_s"]
                row[f"{k} rss_ratio"] = row[k]["peak_rss_mb"] / row[base]["peak_rss_mb"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"threads={args.threads}, repeats={args.repeats} (median), one evaluation = loss + grad")
    print("| size | side | s | GFLOP/s | peak RSS MB | time ratio | RSS ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for k in kinds:
            print(f"| {r['size']} | {k} | {r[k]['median_s']:.3f} | {r[k]['gflops']:.0f} | "
                  f"{r[k]['peak_rss_mb']:.0f} | {r.get(f'{k} time_ratio', float('nan')):.2f} | "
                  f"{r.get(f'{k} rss_ratio', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
