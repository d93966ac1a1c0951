"""What tiling costs (issue 19): one tiled evaluation against the untiled one, in time and
in peak memory, against the bound the method allows.

Time, in one process (median of ``--repeat``): t_tiled / t_untiled against
``(t_features + t_loss) / t_loss × Σ window pixels / image pixels`` — one extra forward per
evaluation (the statistics pass) and the halos are all the method must pay. Memory: each
variant in its own child process, its peak RSS (VmHWM: the prepared problem and one
evaluation).

    python scripts/bench_tiled.py                       # 1024×768 / 512 and 2048×1536 / 1024
    python scripts/bench_tiled.py --only 1024x768:512 --memory 1024x768:256
    python scripts/bench_tiled.py --only --memory --tiled-only 4096x3072:1024 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _bench


def _problem(st, w: int, h: int, tile: int | None):
    from PIL import Image

    content = Image.open(_bench.EXAMPLES / "tubingen.jpg").convert("RGB").resize((w, h))
    return st.prepare(content, _bench.EXAMPLES / "starry_night.jpg", max(w, h),
                      tile_size=tile)


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_case(st, w: int, h: int, tile: int, repeat: int) -> dict:
    whole = _problem(st, w, h, None)
    x = whole.content[0]
    content = whole.content
    t_loss = _median(lambda: whole.evaluate(x), repeat)
    t_features = _median(lambda: st.engine.features([content]), repeat)
    whole = None  # its session's memory goes before the tiled one's
    tiled = _problem(st, w, h, tile)
    t_tiled = _median(lambda: tiled.evaluate(x), repeat)
    ev = tiled.evaluator
    halo_factor = ev.window_pixels / (w * h)
    bound = 1.1 * (t_features + t_loss) / t_loss * halo_factor
    return {"size": f"{w}x{h}", "tile": tile, "tiles": len(ev.tiles),
            "t_loss_s": round(t_loss, 3), "t_features_s": round(t_features, 3),
            "t_tiled_s": round(t_tiled, 3), "ratio": round(t_tiled / t_loss, 3),
            "window_over_image": round(halo_factor, 3), "bound": round(bound, 3),
            "within": t_tiled / t_loss <= bound}


def tiled_only_case(st, w: int, h: int, tile: int, repeat: int) -> dict:
    """Where the untiled run does not fit (print sizes): the tiled problem alone — its
    preparation (targets in tiles), one evaluation and its statistics pass, peak RSS."""
    from nst_onnx.run.resources import peak_rss_mb

    t = time.perf_counter()
    tiled = _problem(st, w, h, tile)
    t_prepare = time.perf_counter() - t
    x = tiled.content[0]
    ev = tiled.evaluator
    image = x.astype("float32").reshape(1, 3, h, w)
    return {"size": f"{w}x{h}", "tile": tile, "tiles": len(ev.tiles),
            "window_over_image": round(ev.window_pixels / (w * h), 3),
            "t_prepare_s": round(t_prepare, 1),
            "t_statistics_s": round(_median(lambda: ev.grams(image), repeat), 1),
            "t_tiled_s": round(_median(lambda: tiled.evaluate(x), repeat), 1),
            "peak_mb": round(peak_rss_mb() or 0)}


def _child(w: int, h: int, tile: int | None, threads: int) -> None:
    """One variant's memory: prepare and evaluate once (run in its own process)."""
    from nst_onnx import StyleTransfer
    from nst_onnx.run.resources import peak_rss_mb

    st = StyleTransfer(device="cpu", threads=threads, log=lambda m: None)
    p = _problem(st, w, h, tile)
    p.evaluate(p.content[0])
    print(json.dumps({"peak_mb": peak_rss_mb()}))


def memory_case(w: int, h: int, tile: int, threads: int) -> dict:
    out = {"size": f"{w}x{h}", "tile": tile}
    for name, t in (("untiled", None), ("tiled", tile)):
        # the child's own VmHWM (wait4's maxrss would count the pages forked from here)
        child = subprocess.run([sys.executable, __file__, "--child", f"{w}x{h}:{t or 0}",
                                "--threads", str(threads)], capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"the {name} child failed: {child.stderr.strip()[-300:]}")
        out[f"{name}_peak_mb"] = round(json.loads(child.stdout.splitlines()[-1])["peak_mb"])
    out["ratio"] = round(out["tiled_peak_mb"] / out["untiled_peak_mb"], 3)
    out["within"] = out["ratio"] <= 0.5
    return out


def _case(text: str) -> tuple[int, int, int]:
    size, tile = text.split(":")
    w, h = size.split("x")
    return int(w), int(h), int(tile)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["1024x768:512", "2048x1536:1024"],
                    help="WxH:TILE time cases")
    ap.add_argument("--memory", nargs="*", default=["1024x768:256"], help="WxH:TILE RSS cases")
    ap.add_argument("--tiled-only", nargs="*", default=[], metavar="WxH:TILE",
                    help="print sizes: the tiled problem alone (e.g. 4096x3072:1024)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        w, h, t = _case(a.child)
        _child(w, h, t or None, a.threads)
        return
    from nst_onnx import StyleTransfer

    print(f"# {_bench.cpu_model()}, {a.threads} threads, CPU", flush=True)
    st = StyleTransfer(device="cpu", threads=a.threads, log=lambda m: None)
    for case in a.only:
        print(json.dumps(time_case(st, *_case(case), a.repeat)), flush=True)
    for case in a.memory:
        print(json.dumps(memory_case(*_case(case), a.threads)), flush=True)
    for case in a.tiled_only:
        print(json.dumps(tiled_only_case(st, *_case(case), a.repeat)), flush=True)


if __name__ == "__main__":
    main()
