"""What onnxruntime's session options do to one loss+gradient evaluation (issue 13: try
what else may pay, and record it). Each variant is its own session of the same graph, the
same inputs; evaluations interleaved across variants, median of --repeats.

    python scripts/bench_session_options.py --size 512 --repeats 7
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

VARIANTS = {
    "default": {},
    "no spinning": {"session.intra_op.allow_spinning": "0"},
    "no prepacking": {"session.disable_prepacking": "1"},
    "worker thread pinned to CPU 2": {"session.intra_op_thread_affinities": "2"},
    "extended (no layout) optimisation": {"level": "extended"},
}


def worker(name: str, size: int, threads: int) -> None:
    """One variant in a process of its own (its threads spin on nobody else's cores)."""
    import onnxruntime as ort

    from nst_onnx import StyleTransfer
    from nst_onnx.run import sessions

    st = StyleTransfer(device="cpu", threads=threads, log=lambda m: None)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    problem = st.prepare(img, img[::-1].copy(), size=size)
    feed = {"image": problem.initial("noise")[None].astype(np.float32), **problem.evaluator.fixed}
    entries = VARIANTS[name]
    so = sessions._session_options("cpu", threads, False)
    if entries.get("level") == "extended":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    for k, v in entries.items():
        if k != "level":
            so.add_session_config_entry(k, v)
    session = ort.InferenceSession(str(st.model_dir / "loss.onnx"), so,
                                   providers=["CPUExecutionProvider"])
    session.run(None, feed)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t = time.perf_counter()
        session.run(None, feed)
        print(json.dumps({"t": time.perf_counter() - t}), flush=True)


def main() -> None:
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.threads)
        return
    from bench_optimizers import cpu_model

    procs = {}
    for name in VARIANTS:
        procs[name] = subprocess.Popen([sys.executable, __file__, "--worker", name, "--size",
                                        str(args.size), "--threads", str(args.threads)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       bufsize=1)
        json.loads(procs[name].stdout.readline())
    times: dict[str, list[float]] = {k: [] for k in procs}
    for _ in range(args.repeats):
        for name, p in procs.items():  # interleaved, one process at a time
            p.stdin.write("run\n")
            times[name].append(json.loads(p.stdout.readline())["t"])
    for p in procs.values():
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait()
    base = statistics.median(times["default"])
    rows = [{"variant": k, "median_s": statistics.median(v),
             "ratio": statistics.median(v) / base} for k, v in times.items()]
    print(json.dumps({"cpu": cpu_model(), "size": args.size, "threads": args.threads,
                      "repeats": args.repeats, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
