"""Loss against time for whole default runs (issue 13: when is a picture finished?).

For each content/style pair at --size: one run of --iterations, recording after every
iteration its wall time and loss, and keeping the image every --every iterations. Then, for
each stop rule "stop once the loss improved by less than τ (relative) over the last k
iterations", where it would have stopped on each pair: the time against the full run's,
the loss against the full run's, and how far the image is from the full run's (mean and
99th-percentile absolute difference in 8-bit levels).

With several ``--optimizers``, each pair is run by each, and every curve is measured
against the first optimiser's full run (the reference: today's 500-iteration default), so
"time" and "loss" answer: what does the default run cost against that reference?

    python scripts/bench_stop_rule.py --size 512 --iterations 500 --out /tmp/stop
    python scripts/bench_stop_rule.py --optimizers lbfgs lbfgs-onnx --out /tmp/stop2
    python scripts/bench_stop_rule.py --optimizers lbfgs:10 lbfgs-onnx lbfgs-onnx:10 \
        --compare-iterations 320 --out /tmp/stop3
    python scripts/bench_stop_rule.py --analyse /tmp/stop/curves.json   # the rules only
    python scripts/bench_stop_rule.py --analyse /tmp/stop3/curves.json --figures lbfgs-onnx
"""

from __future__ import annotations

import os

import _bench  # paths, images folder, BLAS threads

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = _bench.ROOT
sys.path.insert(0, str(ROOT / "scripts"))
SHARED = _bench.images_dir()  # $NST_ONNX_IMAGES, else examples/
PAIRS = [("tubingen.jpg", "starry_night.jpg"), ("tubingen.jpg", "shipwreck.jpg"),
         ("tubingen.jpg", "the_scream.jpg")]


def stop_at(losses: list[float], tau: float, k: int) -> int:
    """First iteration i (1-based) with (L[i−k] − L[i]) / L[i] < τ; len(losses) if none."""
    for i in range(k, len(losses)):
        if (losses[i - k] - losses[i]) / losses[i] < tau:
            return i + 1
    return len(losses)


def analyse(curves: dict, out: Path | None = None) -> list[dict]:
    rows = []
    for tau in (1e-2, 7e-3, 5e-3, 4e-3, 3e-3, 2e-3, 1e-3):
        for k in (10, 15, 20, 25, 40):
            per = []
            for name, c in curves.items():
                losses, seconds = c["loss"], c["seconds"]
                ref_name = c.get("reference", name)
                ref = curves[ref_name]
                i = stop_at(losses, tau, k)
                row = {"pair": name, "stop": i, "time_ratio": seconds[i - 1] / ref["seconds"][-1],
                       "loss_ratio": min(losses[:i]) / min(ref["loss"])}
                if out is not None:
                    j, a, b = _pictures(curves, out, name, i)
                    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                    row |= {"image_at": j, "mean_abs_diff": float(d.mean()),
                            "p99_abs_diff": float(np.percentile(d, 99))}
                per.append(row)
            rows.append({"tau": tau, "k": k, "pairs": per,
                         "max_time_ratio": max(p["time_ratio"] for p in per),
                         "max_loss_ratio": max(p["loss_ratio"] for p in per)})
    return rows


def plot(curves: dict, target: Path, stops: dict[str, int] | None = None,
         names: list[str] | None = None) -> None:
    """Loss ÷ the reference's final loss against seconds, one line per curve in ``names``
    (default: all; log scale), stops marked."""
    from PIL import Image, ImageDraw

    w, h, m = 720, 360, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    names = names or list(curves)
    t_max = max(curves[n]["seconds"][-1] for n in names)
    lo, hi = 0.0, np.log10(2.0)  # loss ratio 1 … 2

    def xy(t, r):
        y = (np.log10(min(max(r, 1.0), 2.0)) - lo) / (hi - lo)
        return m + (w - 2 * m) * t / t_max, h - m - (h - 2 * m) * y
    d.rectangle([m, m, w - m, h - m], outline="black")
    for r in (1.0, 1.03, 1.1, 1.25, 1.5, 2.0):
        x0, y0 = xy(0, r)
        d.line([x0, y0, w - m, y0], fill=(220, 220, 220))
        d.text((5, y0 - 6), f"{r:g}x", fill="black")
    for k in range(0, int(t_max) + 1, 100):
        x0, _ = xy(k, 1)
        d.text((x0 - 8, h - m + 5), f"{k}s", fill="black")
    colours = [(200, 40, 40), (40, 100, 200), (40, 160, 60)]
    for name, col in zip(names, colours):
        c = curves[name]
        final = min(curves[c.get("reference", name)]["loss"])
        pts = [xy(t, v / final) for t, v in zip(c["seconds"], c["loss"])]
        d.line(pts, fill=col, width=2)
        d.text((w - m - 230, m + 8 + 14 * names.index(name)), name, fill=col)
        if stops and name in stops:
            i = stops[name] - 1
            x0, y0 = xy(c["seconds"][i], c["loss"][i] / final)
            d.ellipse([x0 - 4, y0 - 4, x0 + 4, y0 + 4], outline=col, width=2)
    d.text((m, 10), "loss / loss after 500 iterations, against seconds (512 px; circles: the stop rule)",
           fill="black")
    img.save(target)


def figures(curves: dict, out: Path, optimizer: str, target: Path) -> None:
    """The README's figures for ``optimizer``'s curves under the default rule: loss against
    time with the stops marked (``stop_rule_curves.png``), and for the first pair, the
    picture kept nearest before the stop beside the reference's last (``stop_rule.jpg``)."""
    from PIL import Image

    from nst_onnx.config import STOP_TOLERANCE, STOP_WINDOW

    names = [n for n, c in curves.items() if c["optimizer"] == optimizer]
    stops = {n: stop_at(curves[n]["loss"], STOP_TOLERANCE, STOP_WINDOW) for n in names}
    plot(curves, target / "stop_rule_curves.png", stops, names)
    _, a, b = _pictures(curves, out, names[0], stops[names[0]])
    side = Image.new("RGB", (a.width + b.width + 10, max(a.height, b.height)), "white")
    side.paste(a, (0, 0))
    side.paste(b, (a.width + 10, 0))
    side.save(target / "stop_rule.jpg", quality=90)


def _pictures(curves: dict, out: Path, name: str, stop: int):
    """(iteration, picture) kept nearest before ``stop`` on curve ``name``, and its
    reference's last picture."""
    from PIL import Image

    every, ref = curves[name]["every"], curves[name].get("reference", name)
    j = max(every, stop // every * every)
    return (j, Image.open(out / f"{name}_{j}.png").convert("RGB"),
            Image.open(out / f"{ref}_{len(curves[ref]['loss'])}.png").convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--compare-iterations", type=int,
                    help="iterations of the optimisers after the first (default: --iterations)")
    ap.add_argument("--every", type=int, default=10, help="keep the image every N iterations")
    ap.add_argument("--out", default="bench_stop_rule")
    ap.add_argument("--optimizers", nargs="+", default=["lbfgs"],
                    help="each pair by each, as NAME or NAME:HISTORY; the first is the "
                         "reference")
    ap.add_argument("--pairs", nargs="+", metavar="CONTENT:STYLE",
                    help="image files in ../shared/images (default: the three of PAIRS)")
    ap.add_argument("--analyse", help="curves.json of an earlier run: print the rules only")
    ap.add_argument("--figures", metavar="OPTIMIZER",
                    help="with --analyse: draw the README's figures for this optimiser's "
                         "curves (e.g. lbfgs-onnx) into docs/")
    args = ap.parse_args()
    if args.analyse:
        path = Path(args.analyse)
        curves = json.loads(path.read_text())
        if args.figures:
            figures(curves, path.parent, args.figures, ROOT / "docs")
        print(json.dumps(analyse(curves, path.parent), indent=1))
        return

    from bench_optimizers import cpu_model

    from nst_onnx import StyleTransfer
    from nst_onnx.io.images import to_pil
    from nst_onnx.run.resources import peak_rss_mb

    src = SHARED if SHARED.is_dir() else ROOT / "examples"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st = StyleTransfer(device="cpu", log=lambda m: None)
    curves = {}
    pairs = [tuple(p.split(":")) for p in args.pairs] if args.pairs else PAIRS
    for content, style in pairs:
        if not (src / style).exists():
            continue
        pair = f"{Path(content).stem}_{Path(style).stem}"
        problem = st.prepare(src / content, src / style, size=args.size)
        for n, opt in enumerate(args.optimizers):
            optimizer, _, history = opt.partition(":")
            name = pair if n == 0 else f"{pair}_{opt.replace(':', '_h')}"
            its = args.iterations if n == 0 else args.compare_iterations or args.iterations
            losses, seconds = [], []
            start = time.perf_counter()

            def record(p, name=name, losses=losses, seconds=seconds, start=start):
                losses.append(p.loss)
                seconds.append(time.perf_counter() - start)
                if p.iteration % args.every == 0 or p.iteration == p.iterations:
                    to_pil(p.x[None]).save(out / f"{name}_{p.iteration}.png")
            st.run(problem, iterations=its, optimizer=optimizer, callback=record,
                   **({"history": int(history)} if history else {}))
            curves[name] = {"loss": losses, "seconds": seconds, "every": args.every,
                            "shape": list(problem.shape[:2]), "optimizer": opt,
                            **({"reference": pair} if n else {})}
            (out / "curves.json").write_text(json.dumps(curves))
            print(f"{name}: {losses[0]:.4g} → {losses[-1]:.4g} in {seconds[-1]:.0f} s",
                  flush=True)
    report = {"cpu": cpu_model(), "size": args.size, "iterations": args.iterations,
              "optimizers": args.optimizers, "peak_rss_mb": peak_rss_mb(),
              "rules": analyse(curves, out)}
    (out / "stop_rule.json").write_text(json.dumps(report, indent=1))
    print(json.dumps([{k: r[k] for k in ("tau", "k", "max_time_ratio", "max_loss_ratio")}
                      for r in report["rules"]], indent=1))


if __name__ == "__main__":
    main()
