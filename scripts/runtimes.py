"""One export, every runtime: the loss graph evaluated on each runtime installed here, against
onnxruntime's CPU provider in Python (loss and term differences, the gradient's relative L2
difference, seconds per evaluation). A runtime that is missing gets a row saying how to
install it, never a number.

    python scripts/runtimes.py --size 256 --json runtimes.json
    npm install --prefix examples/node   # onnxruntime-node and onnxruntime-web (WASM)

Rows: onnxruntime CPU (the reference; once more with its graph optimisations off, other
convolution kernels: how far two correct float32 evaluations differ at this size), CUDA
and TensorRT (onnxruntime-gpu with a GPU; scripts/gpu_check.py runs this with them),
OpenVINO (``pip install openvino``), onnxruntime-node and onnxruntime-web's WASM build
in Node (examples/node/evaluate.js), onnxruntime-web with WebGPU and with WASM in headless
Chromium (examples/browser/evaluate.html, driven by Playwright; Chromium's WebGPU adapter
without a GPU is SwiftShader, Vulkan on the CPU), and onnx's own reference evaluator (pure
numpy, slow: at --reference-size).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from _bench import cpu_model  # noqa: E402

NODE_DIR = ROOT / "examples" / "node"


def problem(size: int, models: Path | None):
    """The loss graph's file and every input it takes, for the bundled examples at ``size``."""
    from nst_onnx import StyleTransfer
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.export import export_model
    from nst_onnx.graphs.interface import loss_io

    st = StyleTransfer(device="cpu", threads=2, models_dir=models)
    p = st.prepare(ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg",
                   size=size)
    model_dir = export_model(LossSpec(), models)
    feeds = {k: np.asarray(v, np.float32, order="C") for k, v in p.evaluator.fixed.items()}
    noise = np.random.default_rng(0).normal(0, 20, p.content.shape)  # every term non-zero
    feeds["image"] = np.clip(p.content + noise, 0, 255).astype(np.float32)
    return model_dir / loss_io(LossSpec()).file, feeds


def timed(run, repeats: int) -> tuple[dict, float]:
    out = run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def ort_run(graph: Path, feeds: dict, provider: str, threads: int, repeats: int,
            optimise: bool = True):
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return None, f"not available: {provider} needs onnxruntime-gpu and a GPU"
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not optimise:  # other convolution kernels (no NCHWc): the spread of float32 itself
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts = [{"trt_fp16_enable": "False"}] if provider == "TensorrtExecutionProvider" else [{}]
    try:
        s = ort.InferenceSession(str(graph), so, providers=[provider], provider_options=opts)
    except Exception as e:  # a provider whose libraries are missing (TensorRT's, say)
        return None, f"failed: {str(e).splitlines()[0][:120]}"
    if s.get_providers()[0] != provider:
        return None, f"not used: onnxruntime fell back to {s.get_providers()}"
    names = [o.name for o in s.get_outputs()]
    out, sec = timed(lambda: dict(zip(names, s.run(None, feeds))), repeats)
    return (out, sec, ort.__version__), None


def openvino_run(graph: Path, feeds: dict, threads: int, repeats: int, precision: str = "f32"):
    try:
        import openvino as ov
    except ImportError:
        return None, "not installed: pip install openvino"
    core = ov.Core()
    # float32 asked for: on a CPU with bf16 (AVX-512 BF16, AMX) OpenVINO's default is bf16
    config = {"INFERENCE_NUM_THREADS": threads} | (
        {"INFERENCE_PRECISION_HINT": precision} if precision else {})
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
    names = [o.get_any_name() for o in compiled.outputs]

    def run():
        r = compiled(feeds)
        return {n: np.asarray(r[o]) for n, o in zip(names, compiled.outputs)}
    out, sec = timed(run, repeats)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    return (out, sec, f"{ov.__version__.split('-')[0]} {precision}"), None


def node_run(graph: Path, feeds: dict, backend: str, threads: int, repeats: int):
    if shutil.which("node") is None:
        return None, "not installed: Node.js 18+"
    pkg = "onnxruntime-web" if backend == "wasm" else "onnxruntime-node"
    if not (NODE_DIR / "node_modules" / pkg).exists():
        return None, f"not installed: npm install --prefix {NODE_DIR.relative_to(ROOT)}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_feeds(tmp, feeds)
        r = subprocess.run(["node", str(NODE_DIR / "evaluate.js"), str(graph), str(tmp),
                            str(tmp / "out"), backend, str(repeats), str(threads)],
                           capture_output=True, text=True)
        if r.returncode:
            last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else str(r.returncode)
            return None, f"failed: {last.split('was false. ')[-1][:150]}"
        meta = json.loads((tmp / "out" / "outputs.json").read_text())
        out = {o["name"]: np.fromfile(tmp / "out" / f"{o['name']}.bin", "<f4").reshape(o["dims"])
               for o in meta["outputs"]}
    return (out, statistics.median(meta["seconds"]), meta["version"]), None


def write_feeds(folder: Path, feeds: dict) -> None:
    """The feeds as examples/node/evaluate.js and examples/browser/evaluate.html read them."""
    listing = []
    for name, v in feeds.items():
        (folder / f"{name}.bin").write_bytes(v.astype("<f4").tobytes())
        listing.append({"name": name, "shape": list(v.shape), "file": f"{name}.bin"})
    (folder / "feeds.json").write_text(json.dumps(listing))


def chromium() -> str | None:
    import os

    return os.environ.get("NST_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None)


def browser_run(graph: Path, feeds: dict, backend: str, repeats: int):
    """onnxruntime-web in headless Chromium (Playwright), on a loopback server that serves the
    package's dist/ and the feeds with cross-origin isolation (threads for WASM)."""
    import http.server
    import threading

    dist = NODE_DIR / "node_modules" / "onnxruntime-web" / "dist"
    if not dist.exists():
        return None, f"not installed: npm install --prefix {NODE_DIR.relative_to(ROOT)}"
    if chromium() is None:
        return None, "not installed: a Chromium (Debian: apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "not installed: pip install playwright"
    page_dir = ROOT / "examples" / "browser"

    class Files(http.server.SimpleHTTPRequestHandler):
        extensions_map = {".mjs": "text/javascript", ".js": "text/javascript",
                          ".wasm": "application/wasm", ".html": "text/html", "": "application/octet-stream"}

        def translate_path(self, path):
            path = path.split("?")[0]
            for prefix, folder in (("/ort/", dist), ("/work/", work)):
                if path.startswith(prefix):
                    return str(folder / Path(path[len(prefix):]).name)
            return str(page_dir / "evaluate.html")

        def end_headers(self):
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

        def log_message(self, *args):
            pass

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copyfile(graph, work / "graph.onnx")
        write_feeds(work, feeds)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=chromium(),
                                       args=["--no-sandbox", "--enable-unsafe-webgpu"])
                page = b.new_page()
                page.goto(f"http://127.0.0.1:{server.server_port}/")
                page.wait_for_function("window.ready === true")
                try:
                    r = page.evaluate("([b, n]) => window.evaluate(b, n)", [backend, repeats])
                except Exception as e:  # noqa: BLE001 - the runtime's own refusal is the row
                    return None, f"failed: {str(e).splitlines()[0][:150]}"
                finally:
                    b.close()
        finally:
            server.shutdown()
    out = {k: np.asarray(v["data"], np.float32).reshape(v["dims"]) for k, v in r["outputs"].items()}
    label = r["version"] + (f" ({r['adapter']})" if backend == "webgpu" and r["adapter"] else
                            f" ({r['threads']} threads)" if backend == "wasm" else "")
    return (out, statistics.median(r["seconds"]) if r["seconds"] else float("nan"), label), None


def reference_run(graph: Path, feeds: dict):
    import onnx
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(str(graph))
    names = [o.name for o in onnx.load(str(graph)).graph.output]
    t0 = time.perf_counter()
    out = dict(zip(names, ev.run(None, feeds)))
    return (out, time.perf_counter() - t0, onnx.__version__), None


def compare(out: dict, ref: dict) -> dict:
    """Differences against the reference outputs; shapes must be the declared ones."""
    shapes_ok = all(np.shape(out[k]) == np.shape(v) for k, v in ref.items() if k in out)
    terms = [k for k in ref if k not in ("loss", "grad")]
    g, gr = np.asarray(out["grad"], np.float64), np.asarray(ref["grad"], np.float64)
    return {"loss_rel": abs(float(out["loss"]) - float(ref["loss"])) / abs(float(ref["loss"])),
            "term_rel_max": max(abs(float(out[k]) - float(ref[k])) / max(abs(float(ref[k])), 1e-30)
                                for k in terms),
            "grad_rel_l2": float(np.linalg.norm(g - gr) / np.linalg.norm(gr)),
            "shapes_as_declared": shapes_ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reference-size", type=int, default=0,
                    help="also run onnx.reference at this size (0: skip; minutes at 64)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--gpu", action="store_true", help="add the CUDA and TensorRT rows")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    graph, feeds = problem(a.size, a.models)
    h, w = feeds["image"].shape[2:]
    ref, err = ort_run(graph, feeds, "CPUExecutionProvider", a.threads, a.repeats)
    rows = [("onnxruntime (Python)", "CPU", ref, err),
            ("onnxruntime (Python)", "CPU, unoptimised",
             *ort_run(graph, feeds, "CPUExecutionProvider", a.threads, a.repeats, False))]
    if a.gpu:
        for p, label in (("CUDAExecutionProvider", "CUDA"), ("TensorrtExecutionProvider", "TensorRT")):
            rows.append(("onnxruntime (Python)", label, *ort_run(graph, feeds, p, a.threads, a.repeats)))
    rows.append(("OpenVINO", "CPU f32", *openvino_run(graph, feeds, a.threads, a.repeats)))
    rows.append(("OpenVINO", "CPU default", *openvino_run(graph, feeds, a.threads, a.repeats,
                                                          "")))
    rows.append(("onnxruntime-node", "CPU", *node_run(graph, feeds, "node", a.threads, a.repeats)))
    rows.append(("onnxruntime-node", "WebGPU", *node_run(graph, feeds, "webgpu", a.threads,
                                                         a.repeats)))
    rows.append(("onnxruntime-web", "WASM (in Node)",
                 *node_run(graph, feeds, "wasm", a.threads, a.repeats)))
    rows.append(("onnxruntime-web", "WebGPU (Chromium)",
                 *browser_run(graph, feeds, "webgpu", a.repeats)))
    rows.append(("onnxruntime-web", "WASM (Chromium)",
                 *browser_run(graph, feeds, "wasm", a.repeats)))
    report = {"cpu": cpu_model(), "size": [int(h), int(w)], "threads": a.threads, "rows": []}
    for runtime, provider, res, note in rows:
        row = {"runtime": runtime, "provider": provider}
        if res is None:
            row["note"] = note
        else:
            out, sec, version = res
            row |= {"version": version, "seconds": round(sec, 4), **compare(out, ref[0])}
        report["rows"].append(row)
    if a.reference_size:
        g2, f2 = problem(a.reference_size, a.models)
        r2, _ = ort_run(g2, f2, "CPUExecutionProvider", a.threads, 1)
        res, _ = reference_run(g2, f2)
        report["rows"].append({"runtime": "onnx.reference", "provider": f"numpy, {a.reference_size} px",
                               "version": res[2], "seconds": round(res[1], 2),
                               **compare(res[0], r2[0])})
    print(f"{report['cpu']}, {a.threads} threads, loss graph at {h}×{w}, against onnxruntime CPU")
    print(f"{'runtime':22} {'provider':16} {'version':9} {'s/eval':>8} {'loss rel':>9} "
          f"{'terms max':>9} {'grad L2':>9}  shapes")
    for r in report["rows"]:
        if "note" in r:
            print(f"{r['runtime']:22} {r['provider']:16} {r['note']}")
        else:
            print(f"{r['runtime']:22} {r['provider']:16} {r['version']:9} {r['seconds']:8.3f} "
                  f"{r['loss_rel']:9.1e} {r['term_rel_max']:9.1e} {r['grad_rel_l2']:9.1e}  "
                  f"{'as declared' if r['shapes_as_declared'] else 'DIFFER'}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
