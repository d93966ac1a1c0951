"""What ``nst info`` and ``nst bench`` report: versions, providers, devices and exported
models; the time of one loss-and-gradient evaluation per size, and where it goes per op
type (onnxruntime's profiler)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from ._version import __version__
from .api import StyleTransfer
from .errors import BadInput
from .graphs.export import default_models_dir
from .graphs.interface import loss_io
from .graphs.networks import loss_flops
from .graphs.weights import default_cache_dir
from .problem import Problem
from .run import resources
from .run.cuda import installed_runtimes, runtime_clash
from .run.devices import cuda_problem
from .run.sessions import physical_cores


def _profile(st: StyleTransfer, problem: Problem, x: np.ndarray, repeats: int) -> dict:
    """Milliseconds per evaluation by op type, from onnxruntime's profiler (written to a
    temporary folder, never the current one); convolutions against everything else."""
    import tempfile

    ev = problem.evaluator
    model = st.model_dir / loss_io(st.spec).file
    with tempfile.TemporaryDirectory(prefix="nst-profile-") as tmp:
        session = st.engine.session(model, profile_prefix=str(Path(tmp) / "loss"))
        feed = {"image": np.ascontiguousarray(x[None], np.float32), **ev.fixed}
        session.run(None, feed)  # warm-up, not counted
        for _ in range(repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    warm_end = None
    for e in events:  # skip the warm-up run: the first "model_run" event
        if e.get("name") == "model_run":
            warm_end = warm_end or e["ts"] + e["dur"]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") \
                and (warm_end is None or e["ts"] > warm_end):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000 / repeats
    total = sum(per_op.values())
    conv = sum(v for k, v in per_op.items() if k in ("Conv", "FusedConv", "NchwcConv"))
    return {"total_ms": total, "conv_ms": conv, "other_ms": total - conv,
            "other_share": (total - conv) / total if total else 0.0,
            "by_op_ms": dict(sorted(per_op.items(), key=lambda kv: -kv[1]))}


def system_info(models_dir=None, cache_dir=None) -> dict:
    """What ``nst info`` shows: versions, providers, cores, exported models, memory."""
    import sys

    import onnxruntime as ort

    mdir = Path(models_dir) if models_dir else default_models_dir()
    found = []
    for m in sorted(mdir.glob("*/manifest.json")) if mdir.is_dir() else []:
        try:
            d = json.loads(m.read_text())
            found.append({"dir": str(m.parent), "key": d.get("key"), "format": d.get("format"),
                          "weights": d.get("weights", {}).get("kind"),
                          "bytes": sum(f["bytes"] for f in d.get("files", {}).values())})
        except (OSError, ValueError):
            found.append({"dir": str(m.parent), "error": "unreadable manifest"})
    providers = ort.get_available_providers()
    problem = cuda_problem()
    gpu = resources.gpu_memory_mb()
    return {"nst_onnx": __version__, "python": sys.version.split()[0],
            "onnxruntime": ort.__version__, "onnxruntime_packages": installed_runtimes(),
            "runtime_clash": runtime_clash(), "providers": providers,
            "device_auto": "cpu" if problem else "cuda", "cuda": problem or "usable",
            "gpu_memory_mb": None if gpu is None else {"free": round(gpu[0]),
                                                        "total": round(gpu[1])},
            "physical_cores": physical_cores(), "models_dir": str(mdir), "models": found,
            "cache_dir": str(Path(cache_dir) if cache_dir else default_cache_dir()),
            "memory_available_mb": round(resources.available_mb() or 0),
            "memory_estimate_mb": {f"{s}x{s * 3 // 4}":
                                   round(resources.estimate_peak_mb(s * s * 0.75e-6))
                                   for s in (512, 1024, 2048)}}


def bench(st: StyleTransfer, sizes: list[int], repeats: int = 5, profile: bool = False) -> dict:
    """Time one loss+gradient evaluation per square size (median after a warm-up); with
    ``profile``, also where one evaluation's time goes, per op type (onnxruntime's profiler,
    on a separate session of the same graph)."""
    if repeats < 1:
        raise BadInput("--repeats must be ≥ 1")
    if profile and st.device == "cuda":  # seen on an H200: 3.4 ms "total" for a 14.6 ms run
        raise BadInput("--profile splits CPU kernel time; on CUDA onnxruntime's profiler "
                       "records kernel launches, not GPU time (use Nsight Systems there)")
    rows = []
    for size in sizes:
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        problem = st.prepare(img, img[::-1].copy(), size=size)
        x = problem.initial("noise")
        problem.evaluate(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            problem.evaluate(x)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        rows.append({"size": size, "median_s": med,
                     "gflops": loss_flops(st.spec, size, size) / med / 1e9})
        if profile:
            rows[-1]["profile"] = _profile(st, problem, x, repeats)
    return {"device": st.device, "providers": st.providers,
            "threads": st.threads_used,
            "tf32": st.options.tf32, "model": st.manifest["key"],
            "peak_rss_mb": resources.peak_rss_mb(), "results": rows}
