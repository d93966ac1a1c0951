"""The device optimiser against scipy's L-BFGS-B, in one run (issue 10's targets).

For each (content, style) pair and each (size, iterations): the same problem optimised from
the content image by scipy's L-BFGS-B (history 10) and by lbfgs-onnx (history 10), one after
the other, reporting final losses (ratio), wall time, evaluation and optimiser seconds per
iteration, and host bytes per iteration; writes content | L-BFGS-B | lbfgs-onnx side by side
for the first pair at each size.

    python scripts/bench_optimizers.py                      # 256 × 300 and 512 × 100, 2 pairs
    python scripts/bench_optimizers.py --runs 256:300 --pairs 1 --out /tmp/opt
"""

from __future__ import annotations

import os

import _bench  # paths, images folder, BLAS threads

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the `nst` command does

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

ROOT = _bench.ROOT
SHARED = _bench.images_dir()  # $NST_ONNX_IMAGES, else examples/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=["256:300", "512:100"], help="SIZE:ITERATIONS")
    ap.add_argument("--pairs", type=int, default=2, help="how many of the content/style pairs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench_optimizers", help="folder for the JSON and images")
    args = ap.parse_args()

    from nst_onnx import StyleTransfer

    src = SHARED if SHARED.is_dir() else ROOT / "examples"
    pairs = [(src / "tubingen.jpg", src / "starry_night.jpg"),
             (src / "tubingen.jpg", src / ("shipwreck.jpg" if src == SHARED else
                                           "the_scream.jpg"))][: args.pairs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st = StyleTransfer(device="cpu", threads=args.threads, log=lambda m: None)
    rows = []
    for run in args.runs:
        size, iterations = (int(v) for v in run.split(":"))
        for k, (content, style) in enumerate(pairs):
            problem = st.prepare(content, style, size=size)
            row = {"content": content.name, "style": style.name, "size": list(problem.shape[:2]),
                   "iterations": iterations}
            images = []
            for opt in ("lbfgs", "lbfgs-onnx"):
                r = st.run(problem, iterations=iterations, optimizer=opt)
                s = r.summary()
                row[opt] = {key: s[key] for key in (
                    "final_loss", "iterations", "evaluations", "seconds", "eval_seconds",
                    "optimizer_seconds", "host_bytes_per_iteration", "restarts", "stop_reason")}
                row[opt]["optimizer_seconds_per_iteration"] = s["optimizer_seconds"] / iterations
                images.append(r.image)
                print(f"{run} {style.name} {opt}: loss {s['final_loss']:.4g} in {s['seconds']:.0f} s"
                      f" ({s['optimizer_seconds'] / iterations * 1000:.0f} ms/it outside the "
                      "loss graph)", flush=True)
            row["loss_ratio"] = row["lbfgs-onnx"]["final_loss"] / row["lbfgs"]["final_loss"]
            row["optimizer_time_ratio"] = (row["lbfgs-onnx"]["optimizer_seconds"]
                                           / row["lbfgs"]["optimizer_seconds"])
            rows.append(row)
            if k == 0:
                content_img = Image.open(content).convert("RGB").resize(images[0].size,
                                                                        Image.LANCZOS)
                w, h = images[0].size
                side = Image.new("RGB", (3 * w, h))
                for i, img in enumerate([content_img, *images]):
                    side.paste(img, (i * w, 0))
                side.save(out / f"optimizers_{size}.jpg", quality=88)
            (out / "bench_optimizers.json").write_text(json.dumps(
                {"cpu": _bench.cpu_model(), "threads": st.threads, "rows": rows}, indent=2))
    print(json.dumps({"cpu": _bench.cpu_model(), "rows": [
        {k: r[k] for k in ("style", "size", "iterations", "loss_ratio", "optimizer_time_ratio")}
        for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
