"""Measure average pooling's per-channel magnitude factors (nst_onnx/graphs/calibrate.py).

Calibrates on three pictures, then reports how well the factors carry over to two pictures
it did not see (the bundled examples), per pool: the median over channels of
|log(factor measured on the held-out picture / shipped factor)|.

    python scripts/calibrate_pooling.py                  # report only
    python scripts/calibrate_pooling.py --write          # update nst_onnx/graphs/avg_pool_scales.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _bench  # paths, images folder, BLAS threads
import numpy as np

ROOT = _bench.ROOT

SHARED = _bench.images_dir()  # $NST_ONNX_IMAGES, else examples/
CALIBRATE = ["shipwreck.jpg", "the_scream.jpg", "woman-with-hat-matisse.jpg"]
HELD_OUT = [ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"]


def avg_pool_scales(weights, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{'pool1': (64,) float32, …}: per-channel factors making each average pool's mean
    squared output over ``images`` ((1, 3, H, W) float32 each) equal the max pool's. Channels that never fire
    on these images get their pool's median factor."""
    from nst_onnx.config import LossSpec
    from nst_onnx.graphs.calibrate import pooled_channel_sums, pre_pool_layers
    from nst_onnx.graphs.networks import build_features_graph
    from nst_onnx.run.sessions import make_session

    def pooled_mean(pooling: str, layer: str, scales: dict) -> np.ndarray:
        model = build_features_graph(weights, LossSpec((layer,), (layer,), pooling), scales)
        session = make_session(model.SerializeToString())
        sums, count = 0.0, 0
        for image in images:
            s, n = pooled_channel_sums(session.run([f"features_{layer}"], {"image": image})[0],
                                       pooling)
            sums, count = sums + s, count + n
        return sums / count

    scales: dict[str, np.ndarray] = {}
    for b, layer in enumerate(pre_pool_layers(), start=1):
        want = pooled_mean("max", layer, {})
        got = pooled_mean("avg", layer, scales)
        live = got > 1e-6 * got.max()
        factor = np.sqrt(want / np.where(live, got, 1.0))
        factor[~live] = np.median(factor[live])
        scales[f"pool{b}"] = factor.astype(np.float32)
    return scales


def main() -> None:
    from nst_onnx.graphs.calibrate import SCALES_FILE
    from nst_onnx.graphs.weights import load_weights
    from nst_onnx.io.images import fit_longest_side, load_image, to_nchw

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", default=[str(SHARED / n) for n in CALIBRATE])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--write", action="store_true", help=f"write {SCALES_FILE.name}")
    args = ap.parse_args()
    weights = load_weights(None, None, print)

    def load(path):
        return to_nchw(fit_longest_side(load_image(path, "image"), args.size))

    scales = avg_pool_scales(weights, [load(p) for p in args.images])
    for pool, f in scales.items():
        print(f"{pool}: median {np.median(f):.3f}  range {f.min():.2f}–{f.max():.2f}")
    for path in HELD_OUT:
        own = avg_pool_scales(weights, [load(path)])
        print(f"held out {path.name}: " + "  ".join(
            f"{p} {np.median(np.abs(np.log(own[p] / scales[p]))):.3f}" for p in scales))
    if args.write:
        about = {"images": [Path(p).name for p in args.images], "longest_side": args.size,
                 "weights": weights.source, "made_by": "scripts/calibrate_pooling.py"}
        data = {"about": about,
                "scales": {k: [round(float(v), 5) for v in f] for k, f in scales.items()}}
        SCALES_FILE.write_text(json.dumps(data) + "\n")
        print(f"wrote {SCALES_FILE}")


if __name__ == "__main__":
    main()
