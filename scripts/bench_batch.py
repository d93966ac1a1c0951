"""Batch throughput on this machine: jobs per hour for the same 8 jobs run with 1 worker,
with 2 workers, and as Ray tasks (a local Ray), one configuration after the other.

    python scripts/bench_batch.py --size 256 --iterations 100 --out /tmp/bench_batch
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import _bench  # paths, images folder, BLAS threads

ROOT = _bench.ROOT
sys.path.insert(0, str(ROOT / "scripts"))
SHARED = _bench.images_dir()  # $NST_ONNX_IMAGES, else examples/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--out", default="bench_batch")
    ap.add_argument("--configs", nargs="+", default=["workers=1", "workers=2", "ray"])
    args = ap.parse_args()

    from bench_optimizers import cpu_model

    from nst_onnx.batch import batch
    from nst_onnx.config import EngineOptions
    from nst_onnx.run.sessions import physical_cores

    src = SHARED if SHARED.is_dir() else ROOT / "examples"
    contents = [src / "tubingen.jpg", src / "the_scream.jpg"]
    styles = [src / n for n in ("starry_night.jpg", "the_scream.jpg", "shipwreck.jpg",
                                "woman-with-hat-matisse.jpg") if (src / n).exists()]
    out = Path(args.out)
    rows = []
    for config in args.configs:
        folder = out / config.replace("=", "")
        shutil.rmtree(folder, ignore_errors=True)
        kw: dict = {"checkpoint_every": 0}
        if config.startswith("workers="):
            workers = int(config.split("=")[1])
            kw |= {"workers": workers,
                   "engine": EngineOptions(device="cpu", threads=max(1, physical_cores()
                                                                     // workers))}
        else:
            import ray

            ray.init(num_cpus=physical_cores(), include_dashboard=False, log_to_driver=False)
            kw |= {"ray": "auto", "engine": EngineOptions(device="cpu", threads=1)}
        t = time.perf_counter()
        result = batch([str(p) for p in contents], [str(p) for p in styles], folder,
                       size=args.size, iterations=args.iterations, log=lambda m: None, **kw)
        seconds = time.perf_counter() - t
        if config == "ray":
            import ray

            ray.shutdown()
        jobs = len(result.records)
        row = {"config": config, "jobs": jobs, "counts": result.counts, "seconds": seconds,
               "jobs_per_hour": jobs * 3600 / seconds,
               "seconds_per_job": [r.get("seconds") for r in result.records]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"cpu": cpu_model(), "cores": physical_cores(), "size": args.size,
              "iterations": args.iterations, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_batch.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
